"""Cloud backends: public GPU clouds' catalogs as offers, their instances as leases.

``lambda`` (Lambda Cloud, over httpx) needs nothing extra; ``aws`` (EC2, with
Capacity Blocks for ML) needs the ``aicontract[aws]`` extra (boto3). Both are
registered under the ``aicontract.backends`` entry-point group, so
``create_backend("lambda")`` and ``create_backend("aws")`` find them.
"""

from ...jurisdictions import jurisdictions_of
from .base import CatalogEntry, CloudBackend, InstanceState, InstanceView, RateLimiter, node_env
from .credentials import Secret
from .lambda_cloud import LambdaBackend, LambdaCloudError
from .regions import jurisdiction_for, region_country

__all__ = [
    "CatalogEntry",
    "CloudBackend",
    "InstanceState",
    "InstanceView",
    "LambdaBackend",
    "LambdaCloudError",
    "RateLimiter",
    "Secret",
    "jurisdiction_for",
    "jurisdictions_of",
    "node_env",
    "region_country",
]
