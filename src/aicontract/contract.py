"""The contract: what a workload needs, as frozen, validated msgspec Structs.

One validation path serves code and files alike: constructing a Struct in
Python runs the same ``msgspec.convert`` that loading a YAML/TOML/JSON document
does, so ``GPU(memory=">=80GiB")`` and ``gpus: {memory: ">=80GiB"}`` are parsed,
checked and refused by the same code, with the same messages.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import msgspec

from .errors import ContractError
from .jurisdictions import satisfies
from .units import (
    Bytes,
    BytesRange,
    CountRange,
    Duration,
    Money,
    Quantity,
    Range,
    Rate,
    Ratio,
    parse_target,
)

__all__ = [
    "GPU",
    "Contract",
    "GuaranteeLevel",
    "Isolation",
    "Objective",
    "Placement",
    "Preferences",
    "Probe",
    "Resources",
    "Terms",
    "Workload",
    "convert",
]

GuaranteeLevel = Literal["allocated", "reserved", "quota", "best-effort"]
"""How strong a promise an offer or lease is, strongest first."""

GUARANTEE_ORDER: dict[str, int] = {"best-effort": 0, "quota": 1, "reserved": 2, "allocated": 3}

Isolation = Literal["shared", "dedicated-node", "dedicated-host"]
ISOLATION_ORDER: dict[str, int] = {"shared": 0, "dedicated-node": 1, "dedicated-host": 2}

Comparison = Literal["<=", "<", ">=", ">"]
WorkloadKind = Literal["training", "inference", "notebook", "batch"]
Interconnect = Literal["any", "pcie", "nvlink", "infiniband"]
"""How the granted GPUs are connected to each other (see :data:`INTERCONNECT_ORDER`)."""
INTERCONNECT_ORDER: dict[str, int] = {"any": 0, "pcie": 1, "nvlink": 2}
"""The GPU-to-GPU links as a ladder: a grant satisfies what it meets or beats.

``infiniband`` is off the ladder: a fabric between hosts, met only by a grant
that states it."""
Locality = Literal["any", "numa"]
"""Whether the CPUs and memory must sit on the GPUs' NUMA nodes."""
RankKey = Literal["cost", "start_time", "locality", "guarantee", "alternative"]
ViolationPolicy = Literal["notify", "renegotiate", "release"]
BudgetPolicy = Literal["notify", "release"]
Amount = Annotated[str, msgspec.Meta(examples=["500 USD", "20000 EUR"])]
"""A sum of money, ``500 USD`` (prices per hour are :class:`~aicontract.units.Money`)."""
_AMOUNT = re.compile(r"^\s*\d{1,12}(\.\d{1,6})?\s*[A-Z]{3}\s*$")


def check_amount(field: str, value: str | None) -> None:
    """Refuse text that is not a sum of money like ``500 USD`` (raised as field's error)."""
    if value is not None and not _AMOUNT.match(value):
        raise _Invalid(field, f"{value!r} is not a sum of money", "an amount like 500 USD")


_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_JURISDICTION = re.compile(r"^[A-Z]{2,3}$")
_COMPUTE_CAPABILITY = re.compile(r"^\d{1,2}\.\d$")
_MIG_PROFILE = re.compile(r"^\d+g\.\d+gb(\+me)?$")
_LATENCY_SLI = re.compile(r"^(latency|ttft|tpot)_(p\d{1,3}(\.\d+)?|mean|max)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PORT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
# What a grant sets in the workload's env: a contract must not widen or fake its devices.
_GRANT_ENV = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "NVIDIA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
    }
)
_RATE_SLIS = frozenset({"throughput"})
_RATIO_SLIS = frozenset({"availability", "error_rate", "gpu_utilization", "gpu_memory_utilization"})
_MODELS_FORM = "distinct, non-empty model names like H100 or A100-80GB"
_SLI_FORM = (
    "latency_p50/p90/p95/p99/p999 (or ttft_/tpot_ variants), throughput, availability,"
    " error_rate, gpu_utilization or gpu_memory_utilization"
)


def percentile_of(token: str) -> float | None:
    """The percentile a token like ``p99``, ``p99.9`` or ``p999`` names, in (0, 100).

    ``p999`` is the SRE shorthand for the 99.9th percentile (``p9999``: 99.99th).
    ``None`` for tokens that name no usable percentile (``p0``, ``p100``, ``p123``).
    """
    digits = token[1:]
    if not token.startswith("p") or not digits:
        return None
    if "." not in digits and len(digits) > 2:
        if set(digits) != {"9"} or len(digits) > 5:
            return None
        return float(f"99.{digits[2:]}")
    try:
        value = float(digits)
    except ValueError:
        return None
    if not 0 < value < 100 or len(digits.partition(".")[2]) > 3:
        return None
    return value


class _Invalid(ValueError):
    """Raised by ``__post_init__``: names the field (for the error path) and the allowed form."""

    def __init__(self, field: str, message: str, allowed: str | None = None) -> None:
        # "; expected " is how _contract_error tells the allowed form from the message.
        super().__init__(f"@{field}: {message}" + (f"; expected {allowed}" if allowed else ""))


# -- conversion ------------------------------------------------------------------------

_BARE_NUMBER = re.compile(r"^\s*[<>=]*\s*\d+(?:\.\d+)?\s*$")


def _sized(kind: type[Bytes] | type[BytesRange]) -> Any:
    """``kind``'s parser for documents: a size without a unit is refused, as a duration is.

    ``memory: 512`` could mean bytes, MiB or GiB; the code alone (``Bytes(512)``) keeps bytes.
    """

    def parse(value: Any) -> Any:
        parts: list[Any] = [value]
        if isinstance(value, str):
            parts = value.split("..")
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        for part in parts:
            # (inf and nan are refused by the type itself, with a clearer message)
            bare = (isinstance(part, int) and not isinstance(part, bool)) or (
                isinstance(part, float) and math.isfinite(part)
            )
            if bare or (isinstance(part, str) and _BARE_NUMBER.match(part)):
                number = str(part).strip(" <>=")
                raise ContractError(
                    f"a size needs a unit: write {number}GiB or {number}MiB, not {number}",
                    value=value,
                    allowed=kind.ALLOWED.replace("an integer number of bytes or ", ""),
                )
        return kind(value)

    return parse


_DECODERS: dict[type, Any] = {
    Bytes: _sized(Bytes),
    Duration: Duration,
    Rate: Rate,
    Money: Money,
    Ratio: Ratio,
    Quantity: parse_target,
    CountRange: CountRange,
    BytesRange: _sized(BytesRange),
}


def decode_quantity(kind: type, value: Any) -> Any:
    """msgspec ``dec_hook``: build quantities and ranges from text, numbers or instances."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise TypeError(f"no decoder for {kind!r}")  # every contract type has one above
    try:
        return decoder(value)
    except ContractError as exc:
        raise ValueError(
            exc.message if exc.allowed is None else f"{exc.message}; expected {exc.allowed}"
        ) from None


def encode_quantity(value: Any) -> Any:
    """msgspec ``enc_hook``: quantities and ranges as the text they were written in."""
    if isinstance(value, (Range, Ratio)):
        return value.to_builtin()
    if isinstance(value, Quantity):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


_LOCATED = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")


def convert(data: Any, kind: type[Any], *, _where: str | None = None) -> Any:
    """Validate builtins (a parsed document, or constructor keywords) into ``kind``.

    Every failure becomes one :class:`ContractError` naming the path, the value
    found there and the allowed form.
    """
    expand = getattr(kind, "_expand_shorthands", None)
    if expand is not None and isinstance(data, dict):
        # Documents, templates and `Resources(...)` all come through here, so a
        # shorthand reads the same everywhere; `data` itself is left as it was.
        data = expand(data)
    try:
        return msgspec.convert(data, kind, dec_hook=decode_quantity)
    except msgspec.ValidationError as exc:
        raise _contract_error(str(exc), data, kind, _where) from None


def mutable_parts(contract: Contract) -> tuple[Any, ...]:
    """The contents of a contract's dicts (labels, workload env and ports): a frozen contract
    can still have them changed in place, so whatever is cached per contract checks them."""
    workload = contract.workload
    if workload is None:
        return (tuple(contract.labels.items()),)
    return (
        tuple(contract.labels.items()),
        tuple(workload.env.items()),
        tuple(workload.ports.items()),
    )


def gpu_count_shorthand(value: Any) -> Any:
    """``gpus: 2`` or ``gpus: "1..8"`` means ``gpus: {count: ...}`` (any other value as is).

    A fractional number is a count too, so its error speaks of the count, not of an object.
    """
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return {"count": value}
    return value


def expand_shorthands(document: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a contract document with ``gpus: N`` in ``resources`` and each of
    ``alternatives`` written out as ``gpus: {count: N}`` (for code that merges documents,
    like template overrides, before the loader reads them)."""
    expanded = dict(document)
    if "resources" in document:
        expanded["resources"] = _expand_gpus(document["resources"])
    if isinstance(document.get("alternatives"), list):
        expanded["alternatives"] = [_expand_gpus(choice) for choice in document["alternatives"]]
    return expanded


def _expand_gpus(resources: Any) -> Any:
    """A copy of a resources mapping with its ``gpus`` shorthand expanded."""
    if isinstance(resources, dict) and "gpus" in resources:
        gpus = gpu_count_shorthand(resources["gpus"])
        if gpus is not resources["gpus"]:
            return {**resources, "gpus": gpus}
    return resources


def _contract_error(text: str, data: Any, kind: type[Any], where: str | None) -> ContractError:
    match = _LOCATED.match(text)
    assert match is not None  # the pattern matches any text
    message, path = match["msg"], match["path"] or "$"
    if message.startswith("@"):
        field, _, message = message[1:].partition(": ")
        path = f"{path}.{field}"
    allowed: str | None = None
    unknown = _UNKNOWN.match(message)
    if unknown:
        key = unknown["key"]
        owner = _type_at(kind, path)
        fields = sorted(f for f in getattr(owner, "__struct_fields__", ()))
        if where == "Contract" and path == "$":
            fields = sorted({*fields, *Contract._SHORTCUTS})
        close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
        message = f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
        allowed = ", ".join(fields)
        value = key
    else:
        value = _value_at(data, path)
        if message.startswith("Expected `"):
            allowed = message[len("Expected `") :].split("`", 1)[0]
            # A Struct that may also be written another way says so (gpus: 2).
            allowed = getattr(_type_at(kind, path), "WRITTEN_AS", None) or allowed
        elif message.startswith("Invalid enum value"):
            allowed = _enum_values(_type_at(kind, path, leaf=True))
        elif "; expected " in message:  # from decode_quantity
            message, allowed = message.rsplit("; expected ", 1)
        message = message.replace("Expected `", "expected `")
    if where and where != "Contract":
        path = where + path[1:]
    return ContractError(message, path=path, value=value, allowed=allowed)


def _enum_values(tp: Any) -> str | None:
    for arg in (tp, *get_args(tp)):
        if get_origin(arg) is Literal:
            return " | ".join(str(v) for v in get_args(arg))
    return None


def _steps(path: str) -> list[str | int]:
    steps: list[str | int] = []
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path[1:]):
        steps.append(part[0] if part[0] else int(part[1]))
    return steps


def _type_at(kind: Any, path: str, *, leaf: bool = False) -> Any:
    """The Struct type found at ``path`` (or the field's annotation with ``leaf``)."""
    current = kind
    for step in _steps(path):
        current = _unwrap(current)
        if isinstance(step, int):
            args = get_args(current)
            current = args[0] if args else current
            continue
        hints = _struct_hints(current)
        if step not in hints:
            return current
        current = hints[step]
    return current if leaf else _unwrap(current)


def _struct_hints(kind: Any) -> dict[str, Any]:
    try:
        info = msgspec.inspect.type_info(kind)
    except Exception:
        return {}
    fields = getattr(info, "fields", ())
    return {f.name: _annotation(kind, f.name) for f in fields}


def _annotation(kind: Any, name: str) -> Any:
    import typing

    return typing.get_type_hints(kind).get(name)


def _unwrap(tp: Any) -> Any:
    """Strip ``X | None`` and ``tuple[X, ...]`` down to the Struct inside, if any."""
    for arg in get_args(tp) or ():
        if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
            return arg
    return tp


def _value_at(data: Any, path: str) -> Any:
    current = data
    for step in _steps(path):
        try:
            current = current[step]
        except (KeyError, IndexError, TypeError):
            try:
                current = getattr(current, str(step))
            except AttributeError:
                return None
    return current


# -- the contract ----------------------------------------------------------------------


class _ModelMeta(msgspec.StructMeta):
    """Routes ``Model(**kwargs)`` through ``msgspec.convert`` so code is validated like files."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError(f"{cls.__name__}() takes keyword arguments only")
        shortcut = getattr(cls, "_shortcuts", None)
        if shortcut is not None:
            kwargs = shortcut(kwargs)
        return convert(kwargs, cls, _where=cls.__name__)


class _Model(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    metaclass=_ModelMeta,
):
    """Base of every contract Struct: frozen, keyword-only, unknown keys refused."""

    def __reduce__(self) -> tuple[Any, ...]:
        # msgspec pickles a Struct as cls(*fields), which _ModelMeta refuses; go
        # through the documented form instead, so unpickling validates like loading.
        return (_restore, (type(self), msgspec.to_builtins(self, enc_hook=encode_quantity)))


def _restore(kind: type[Any], data: dict[str, Any]) -> Any:
    return convert(data, kind)


class GPU(_Model, frozen=True):
    """Accelerators: how many, which models (in order of preference), how big.

    ``models`` are alternatives: the first one a backend can offer wins, all
    else equal. An empty list accepts any model.

    ``interconnect`` is how the granted GPUs are linked *to each other*, as a
    minimum: ``nvlink`` (every pair NVLink-linked, directly or through an
    NVSwitch), ``pcie`` (any path on one host; NVLink satisfies it too), or
    ``any``; ``infiniband`` asks for GPUs joined by an InfiniBand fabric and is
    met only by a grant that says so. A grant of one GPU meets ``nvlink`` and
    ``pcie`` trivially.
    """

    WRITTEN_AS: ClassVar[str] = (
        "a count like 2 or a range like 1..8, or a mapping like {count: 2, models: [H100]}"
    )
    """How a GPU requirement may be written, for errors about its shape."""

    count: CountRange = msgspec.field(default_factory=lambda: CountRange(1))
    models: tuple[str, ...] = ()
    memory: BytesRange | None = None
    compute_capability: str | None = None
    interconnect: Interconnect | None = None
    mig: str | None = None

    def __post_init__(self) -> None:
        if self.count.min is None or self.count.min < 1:
            raise _Invalid(
                "count",
                f"{self.count} allows zero GPUs; omit gpus for none",
                "at least one GPU, like 1, 1..8 or >=2",
            )
        for name in self.models:
            if not name.strip():
                raise _Invalid("models", "model names must not be empty", _MODELS_FORM)
        if len(set(self.models)) != len(self.models):
            raise _Invalid("models", f"{list(self.models)} lists a model twice", _MODELS_FORM)
        if self.compute_capability is not None and not _COMPUTE_CAPABILITY.match(
            self.compute_capability
        ):
            raise _Invalid(
                "compute_capability",
                f"{self.compute_capability!r} is not a compute capability",
                "text like '8.0' or '9.0'",
            )
        if self.mig is not None and not _MIG_PROFILE.match(self.mig):
            raise _Invalid(
                "mig", f"{self.mig!r} is not a MIG profile", "a profile like '1g.10gb' or '3g.40gb'"
            )


# The most nodes one gang may ask for: a bound that catches typos (``nodes: 80000``), far
# above the largest training gangs run today (a few thousand nodes).
MAX_NODES = 4096


class Resources(_Model, frozen=True):
    """Hard requirements on hardware. Each may be an exact value or a range.

    ``nodes`` asks for a gang of that many machines, bound all or nothing;
    ``gpus``, ``cpus``, ``memory`` and ``disk`` are then what *each* node gets.
    """

    gpus: GPU | None = None
    cpus: CountRange | None = None
    memory: BytesRange | None = None
    disk: BytesRange | None = None
    nodes: int = 1

    @classmethod
    def _expand_shorthands(cls, data: dict[str, Any]) -> Any:
        return _expand_gpus(data)

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise _Invalid(
                "nodes",
                f"{self.nodes} nodes is outside 1..{MAX_NODES}",
                f"a whole number of nodes in 1..{MAX_NODES} (GPUs, CPUs and memory are per node)",
            )
        if self.cpus is not None and (self.cpus.min is None or self.cpus.min < 1):
            # A lease with zero CPUs would pin its workload to nothing; omit cpus instead.
            raise _Invalid(
                "cpus", f"{self.cpus} allows zero CPUs", "at least one CPU, like 4, 1..8 or >=2"
            )


_NOTHING = Resources()
_MAX_ALTERNATIVES = 8


class Objective(_Model, frozen=True):
    """A service-level objective: ``sli op target`` over a sliding ``window``."""

    sli: str
    op: Comparison
    target: Quantity
    window: Duration = msgspec.field(default_factory=lambda: Duration("5m"))

    def __post_init__(self) -> None:
        if not self.window:
            raise _Invalid(
                "window", "the window must be longer than zero", "a duration like 5m or 1h"
            )
        latency = _LATENCY_SLI.match(self.sli)
        statistic = latency.group(2) if latency else ""
        if latency and statistic not in ("mean", "max") and percentile_of(statistic) is None:
            raise _Invalid(
                "sli",
                f"{self.sli!r} names no usable percentile",
                "p50, p90, p99, p99.9 and the like",
            )
        if latency:
            expected: type[Quantity] = Duration
        elif self.sli in _RATE_SLIS:
            expected = Rate
        elif self.sli in _RATIO_SLIS:
            expected = Ratio
        else:
            raise _Invalid("sli", f"unknown SLI {self.sli!r}", _SLI_FORM)
        if not isinstance(self.target, expected):
            form = {
                Duration: "a latency like 200ms",
                Rate: "a rate like 500/s",
                Ratio: "a percentage like 99.9%",
            }[expected]
            raise _Invalid("target", f"{self.sli} needs {form}, got {str(self.target)!r}", form)

    def met_by(self, value: Quantity) -> bool:
        """True when ``value`` satisfies the objective."""
        if self.op == "<=":
            return value <= self.target
        if self.op == "<":
            return value < self.target
        if self.op == ">=":
            return value >= self.target
        return value > self.target


class Placement(_Model, frozen=True):
    """Where the work may run, and how alone it must be there.

    ``regions``/``jurisdictions``/``providers`` are allow-lists (empty = any);
    ``deny_regions`` always wins. A location whose jurisdiction is unknown
    never satisfies a jurisdiction requirement.
    """

    regions: tuple[str, ...] = ()
    deny_regions: tuple[str, ...] = ()
    jurisdictions: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    isolation: Isolation = "shared"
    locality: Locality = "any"
    """``numa``: the granted CPUs and memory sit on the NUMA node(s) of the granted GPUs
    (on one NUMA node when the grant has no GPU); ``any``: wherever."""

    def __post_init__(self) -> None:
        both = sorted(set(self.regions) & set(self.deny_regions))
        if both:
            raise _Invalid(
                "deny_regions",
                f"{both} are both required (regions) and denied",
                "deny_regions that do not also appear in regions",
            )
        for code in self.jurisdictions:
            if not _JURISDICTION.match(code):
                raise _Invalid(
                    "jurisdictions",
                    f"{code!r} is not a jurisdiction code",
                    "two or three capital letters, like EU, US or DE",
                )

    def misfits(
        self, *, region: str, jurisdiction: str | None, provider: str
    ) -> list[tuple[str, str, str]]:
        """Each way a location breaks this placement, as ``(field, wanted, found)``.

        The one home of guarantee 2's location rule: the negotiator and every
        backend's own pre-filtering ask here. Jurisdictions nest (``DE`` lies in
        ``EU``), see :mod:`aicontract.jurisdictions`.
        """
        out: list[tuple[str, str, str]] = []
        if self.providers and provider not in self.providers:
            out.append(("placement.providers", ", ".join(self.providers), provider))
        if region in self.deny_regions or (self.regions and region not in self.regions):
            wanted = ", ".join(self.regions) or f"not {', '.join(self.deny_regions)}"
            out.append(("placement.regions", wanted, region))
        if self.jurisdictions and not satisfies(jurisdiction, self.jurisdictions):
            out.append(
                (
                    "placement.jurisdictions",
                    ", ".join(self.jurisdictions),
                    jurisdiction or "unknown jurisdiction",
                )
            )
        return out

    def allows(self, *, region: str, jurisdiction: str | None, provider: str) -> bool:
        """True when a location is allowed by this placement (guarantee 2's check)."""
        return not self.misfits(region=region, jurisdiction=jurisdiction, provider=provider)


class Terms(_Model, frozen=True):
    """Business terms: how long, how soon, for how much, how strongly promised."""

    duration: Duration | None = None
    renewable: bool = True
    start_by: Duration | None = None
    max_price: Money | None = None
    priority: int = 0
    preemptible: bool = False
    min_guarantee: GuaranteeLevel = "best-effort"
    on_violation: ViolationPolicy = "notify"
    max_renegotiations_per_hour: int = 3
    budget: Amount | None = None
    """What the contract may spend over its whole life: every lease, extension, renegotiation."""
    on_budget: BudgetPolicy = "notify"
    """When the budget runs out: ``notify`` (at 50/80/100%), or ``release`` the lease."""
    stop_grace: Duration | None = None
    """How long a workload has between SIGTERM and SIGKILL when its lease ends (10s if unset)."""
    drain: Duration | None = None
    """After a renegotiation's switch, how long the old lease keeps serving before it is
    released, so requests already sent to it finish (``0s``: at once; unset: 2s)."""

    def __post_init__(self) -> None:
        check_amount("budget", self.budget)
        if self.drain is not None and self.drain.seconds > 600:
            raise _Invalid("drain", f"{self.drain} is longer than 10m", "a duration up to 10m")
        if self.stop_grace is not None and self.stop_grace.seconds > 3600:
            raise _Invalid(
                "stop_grace", f"{self.stop_grace} is longer than 1h", "a duration up to 1h"
            )
        if self.duration is not None and not self.duration:
            raise _Invalid(
                "duration", "the duration must be longer than zero", "a duration like 4h or 30m"
            )
        if not -1000 <= self.priority <= 1000:
            raise _Invalid(
                "priority", f"{self.priority} is outside -1000..1000", "an integer in -1000..1000"
            )
        if not 0 <= self.max_renegotiations_per_hour <= 3600:
            raise _Invalid(
                "max_renegotiations_per_hour",
                f"{self.max_renegotiations_per_hour} is outside 0..3600",
                "an integer in 0..3600",
            )

    @property
    def drain_seconds(self) -> float:
        """Seconds of :attr:`drain`: 2 s unless the contract says otherwise.

        Long enough for a request sent just before a switch to finish (a p99 objective
        is usually well under a second), short enough that two leases are not held
        for long: with none, about one request in a thousand sent across a switch
        was cut off; with 1 s, none in 4,887.
        """
        return 2.0 if self.drain is None else self.drain.seconds

    @property
    def currency(self) -> str:
        """The currency the contract counts money in: its ``max_price``'s, else USD."""
        return self.max_price.currency if self.max_price is not None else "USD"


class Probe(_Model, frozen=True):
    """How to probe a published endpoint for latency and availability."""

    endpoint: str | None = None
    path: str = "/"
    method: Literal["GET", "HEAD", "POST"] = "GET"
    body: str | None = None
    interval: Duration = msgspec.field(default_factory=lambda: Duration("10s"))
    timeout: Duration = msgspec.field(default_factory=lambda: Duration("5s"))

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise _Invalid(
                "path", f"{self.path!r} must start with '/'", "an HTTP path like /health"
            )
        if not self.interval:
            raise _Invalid(
                "interval", "the probe interval must be longer than zero", "a duration like 10s"
            )
        if not self.timeout:
            raise _Invalid(
                "timeout", "the probe timeout must be longer than zero", "a duration like 5s"
            )


class Workload(_Model, frozen=True):
    """What runs on the lease: its kind, the command or image, the ports to publish.

    A port given as ``auto`` is capacity: the backend grants a free one and
    hands it to the workload (the local backend as ``AICONTRACT_PORT_<NAME>``)
    and in the lease's endpoints.
    """

    kind: WorkloadKind = "batch"
    image: str | None = None
    command: tuple[str, ...] = ()
    env: dict[str, str] = msgspec.field(default_factory=dict)
    ports: dict[str, int | Literal["auto"]] = msgspec.field(default_factory=dict)
    probe: Probe | None = None
    procs_per_node: int | None = None
    """Training processes per node on a CPU run (default 1); a GPU grant runs one per GPU."""

    @property
    def fixed_ports(self) -> dict[str, int]:
        """The ports given as numbers."""
        return {n: p for n, p in self.ports.items() if not isinstance(p, str)}

    @property
    def auto_ports(self) -> tuple[str, ...]:
        """The names of the ports given as ``auto`` (granted by the backend)."""
        return tuple(n for n, p in self.ports.items() if isinstance(p, str))

    def __post_init__(self) -> None:
        for name, port in self.ports.items():
            if isinstance(port, str):
                # Its name becomes part of an env var name (AICONTRACT_PORT_<NAME>).
                if not _PORT_NAME.match(name):
                    raise _Invalid(
                        "ports",
                        f"auto port name {name[:80]!r} cannot name AICONTRACT_PORT_<NAME>",
                        "letters, digits, '_' and '-', starting with a letter",
                    )
                continue
            if not 1 <= port <= 65535:
                raise _Invalid(
                    "ports",
                    f"port {name}={port} is outside 1..65535",
                    "port numbers in 1..65535, or auto",
                )
        if self.procs_per_node is not None and not 1 <= self.procs_per_node <= 1024:
            raise _Invalid(
                "procs_per_node",
                f"{self.procs_per_node} processes per node is outside 1..1024",
                "a count of processes per node in 1..1024",
            )
        if self.procs_per_node is not None and self.kind != "training":
            # Only a training lease has a world for it to shape: never a silent no-op.
            raise _Invalid(
                "procs_per_node",
                f"applies to training workloads only; this one's kind is {self.kind}",
                "kind: training alongside procs_per_node",
            )
        for index, arg in enumerate(self.command):
            if "\x00" in arg:
                raise _Invalid(f"command[{index}]", "contains a NUL byte", "text without NUL")
        for key, value in self.env.items():
            if not _ENV_NAME.match(key) or "\x00" in value:
                raise _Invalid(
                    "env",
                    f"{key[:80]!r} is not a usable environment variable",
                    "letters, digits and '_', not starting with a digit; values without NUL",
                )
            if key.upper().startswith("AICONTRACT_") or key.upper() in _GRANT_ENV:
                raise _Invalid(
                    f"env.{key}",
                    f"{key} is set by the grant, not by the contract",
                    "any variable but AICONTRACT_* and " + ", ".join(sorted(_GRANT_ENV)),
                )
        if self.probe and self.probe.endpoint and self.probe.endpoint not in self.ports:
            raise _Invalid(
                "probe",
                f"probe endpoint {self.probe.endpoint!r} is not one of the ports"
                f" {sorted(self.ports)}",
                "the name of one of workload.ports",
            )


class Preferences(_Model, frozen=True):
    """How to rank acceptable offers: keys in order of importance, preferred regions.

    ``alternative`` ranks offers by the contract's choice they serve (``resources``
    first, then ``alternatives`` in order); left out of ``rank``, it ranks before
    every other key, so an earlier choice wins whatever a later one costs.
    """

    rank: tuple[RankKey, ...] = ("guarantee", "cost", "start_time", "locality")
    regions: tuple[str, ...] = ()
    hedge: Duration | None = None
    """Stop waiting for slow backends once this long has passed and an acceptable offer
    is in hand (``200ms``, say); unset: wait for every backend (up to its quote timeout)."""

    def __post_init__(self) -> None:
        if self.hedge is not None and self.hedge.seconds > 600:
            raise _Invalid("hedge", f"{self.hedge} is longer than 10m", "a duration up to 10m")
        if len(set(self.rank)) != len(self.rank):
            raise _Invalid(
                "rank",
                f"{list(self.rank)} names a key twice",
                "each of cost, start_time, locality, guarantee, alternative at most once",
            )


class Contract(_Model, frozen=True):
    """What a workload needs from infrastructure.

    Build it in code — ``Contract(gpus=GPU(count=8, models=["H100"]), duration="4h")``
    — or load it from a file with :func:`aicontract.load`. The shortcuts
    ``gpus``, ``cpus``, ``memory``, ``disk``, ``nodes`` (resources), ``duration``,
    ``start_by``, ``max_price``, ``preemptible``, ``min_guarantee``, ``renewable``,
    ``on_violation`` (terms) and
    ``regions``, ``jurisdictions``, ``isolation`` (placement) fill the nested
    sections; ``gpus=2`` means ``GPU(count=2)``.

    ``alternatives`` are fallbacks for ``resources``, in order of preference:
    ``Contract(gpus=GPU(models=["H100"]), alternatives=[Resources(cpus=8)])``
    asks for an H100, else 8 CPUs, in one negotiation. Everything else
    (placement, terms, objectives) holds for every choice.
    """

    name: str = "unnamed"
    tenant: str = "default"
    resources: Resources = Resources()
    alternatives: Annotated[
        tuple[Resources, ...],
        msgspec.Meta(
            description=f"Fallbacks for resources, best first (at most {_MAX_ALTERNATIVES}).",
            extra_json_schema={"maxItems": _MAX_ALTERNATIVES},
        ),
    ] = ()
    """Fallbacks for ``resources``, best first; a grant names the one it serves."""
    objectives: tuple[Objective, ...] = ()
    placement: Placement = Placement()
    terms: Terms = Terms()
    workload: Workload | None = None
    preferences: Preferences = Preferences()
    labels: dict[str, str] = msgspec.field(default_factory=dict)

    _SHORTCUTS: ClassVar[dict[str, str]] = {
        "gpus": "resources",
        "cpus": "resources",
        "memory": "resources",
        "disk": "resources",
        "nodes": "resources",
        "duration": "terms",
        "start_by": "terms",
        "max_price": "terms",
        "preemptible": "terms",
        "min_guarantee": "terms",
        "renewable": "terms",
        "on_violation": "terms",
        "regions": "placement",
        "jurisdictions": "placement",
        "isolation": "placement",
    }

    @classmethod
    def _expand_shorthands(cls, data: dict[str, Any]) -> Any:
        return expand_shorthands(data)

    @classmethod
    def pop_shortcuts(cls, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Take the shortcut keys (``gpus``, ``duration``…) out of ``data``, by section
        (``{"resources": {"gpus": {"count": 2}}}``), for code and templates alike."""
        sections: dict[str, dict[str, Any]] = {}
        for key in [k for k in data if k in cls._SHORTCUTS]:
            value = data.pop(key)
            if key == "gpus":
                value = gpu_count_shorthand(value)
            sections.setdefault(cls._SHORTCUTS[key], {})[key] = value
        return sections

    @classmethod
    def _shortcuts(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        sections = cls.pop_shortcuts(kwargs)
        for section, values in sections.items():
            if section in kwargs:
                raise ContractError(
                    f"give {sorted(values)} either as shortcuts or inside {section}=, not both",
                    path=f"$.{section}",
                )
            kwargs[section] = values
        return kwargs

    def __post_init__(self) -> None:
        for field, value in (("name", self.name), ("tenant", self.tenant)):
            if not _NAME.match(value):
                raise _Invalid(
                    field,
                    f"{value!r} is not a name",
                    "1-63 lowercase letters, digits, '-', '.' or '_',"
                    " starting and ending with a letter or digit",
                )
        if self.alternatives:
            if len(self.alternatives) > _MAX_ALTERNATIVES:
                # Each choice is quoted by every backend: the list bounds the fan-out.
                raise _Invalid(
                    "alternatives",
                    f"{len(self.alternatives)} alternatives are too many",
                    f"at most {_MAX_ALTERNATIVES} fallbacks, best first",
                )
            if self.resources == _NOTHING:
                # Most likely every choice went into alternatives and the first was lost.
                raise _Invalid(
                    "alternatives",
                    "alternatives are fallbacks for resources, which asks for nothing",
                    "the first choice in resources and the fallbacks in alternatives",
                )
        if self.workload is None:
            return
        if self.workload.probe and not self.workload.ports:
            raise _Invalid(
                "workload",
                "a probe needs at least one published port",
                "a probe together with ports, or no probe",
            )

    @classmethod
    def from_template(cls, ref: str, **values: Any) -> Contract:
        """A contract from template ``ref`` (``train-eu@1.2``): parameters and unlocked overrides.

        See :mod:`aicontract.governance.templates`; overriding a locked field is refused.
        """
        from .governance.templates import from_template

        return from_template(ref, **values)

    # -- alternatives ----------------------------------------------------------------

    @property
    def choices(self) -> tuple[Resources, ...]:
        """Every acceptable set of resources, best first: ``resources``, then ``alternatives``."""
        return (self.resources, *self.alternatives)

    def resources_for(self, alternative: int | None) -> Resources:
        """One choice's resources: ``None`` for ``resources``, ``i`` for ``alternatives[i]``."""
        if alternative is None:
            return self.resources
        if not 0 <= alternative < len(self.alternatives):
            raise ContractError(
                f"the contract has no alternatives[{alternative}]",
                path="$.alternatives",
                value=alternative,
                allowed=f"None (resources) or an index below {len(self.alternatives)}",
            )
        return self.alternatives[alternative]

    def narrow(self, alternative: int | None) -> Contract:
        """This contract asking for one choice alone: its resources, no alternatives.

        What a backend is asked to quote, and what an offer for that choice is
        checked against; :meth:`widen` puts the other choices back.
        """
        resources = self.resources_for(alternative)
        if not self.alternatives:
            return self
        narrowed: Contract = msgspec.structs.replace(self, resources=resources, alternatives=())
        return narrowed

    def widen(self, narrowed: Contract, alternative: int | None) -> Contract:
        """``narrowed`` (one choice of this contract, perhaps relaxed by a counter-offer)
        with this contract's other choices around it again: the inverse of :meth:`narrow`."""
        if not self.alternatives:
            return narrowed
        alternatives = list(self.alternatives)
        resources = narrowed.resources
        if alternative is not None:
            self.resources_for(alternative)  # refuses an index it does not have
            alternatives[alternative], resources = narrowed.resources, self.resources
        try:
            whole: Contract = msgspec.structs.replace(
                narrowed, resources=resources, alternatives=tuple(alternatives)
            )
        except ValueError as exc:  # __post_init__'s refusal (say, resources relaxed to nothing)
            raise _contract_error(str(exc), None, Contract, None) from None
        return whole

    @staticmethod
    def choice_name(alternative: int | None) -> str:
        """The contract path of a choice: ``resources`` or ``alternatives[i]``."""
        return "resources" if alternative is None else f"alternatives[{alternative}]"

    @staticmethod
    def requirement_path(path: str, alternative: int | None) -> str:
        """``path`` (a requirement found for a narrowed contract) named in the whole contract:
        ``resources.gpus.count`` for ``alternatives[1]`` is ``alternatives[1].gpus.count``."""
        if alternative is None or not (path == "resources" or path.startswith("resources.")):
            return path
        return f"alternatives[{alternative}]{path[len('resources') :]}"

    def with_(self, **changes: Any) -> Contract:
        """A copy with some top-level fields (or shortcuts) changed, validated again."""
        data = msgspec.to_builtins(self, enc_hook=encode_quantity)
        data.update(msgspec.to_builtins(self._shortcuts(dict(changes)), enc_hook=encode_quantity))
        result: Contract = convert(data, Contract)
        return result
