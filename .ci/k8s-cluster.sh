#!/usr/bin/env bash
# Prepare the binaries for the local Kubernetes test control plane
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler).
#
#   * etcd comes from the Debian package `etcd-server`.
#   * The Kubernetes control-plane binaries are built from Debian's source
#     package `kubernetes` (bookworm: 1.20.2 with vendored dependencies)
#     using Debian's `golang-go`.
#
# Everything ends up in one cache directory:
#     ${AICONTRACT_K8S_CACHE:-$HOME/.cache/aicontract/k8s-v1.20.2}
# Re-runs are fast: nothing is installed or built when the binaries are
# already cached. Progress goes to stderr; the LAST line of stdout is the
# cache directory (the value to put into AICONTRACT_K8S_BIN).
#
# Requirements: Debian bookworm (or compatible), run as root (or with
# passwordless sudo), access to the configured Debian archive.
#
# Environment:
#   AICONTRACT_K8S_CACHE      where the binaries are cached (see above)
#   AICONTRACT_K8S_BUILD_DIR  scratch dir for the source build (default: a
#                             fresh temp dir under /var/tmp, removed at exit;
#                             needs ~4 GB free while building)
#   AICONTRACT_K8S_JOBS       parallel Go build jobs (default: nproc)
set -euo pipefail

K8S_VERSION="1.20.2"
CACHE_DIR="${AICONTRACT_K8S_CACHE:-${HOME:-/root}/.cache/aicontract/k8s-v${K8S_VERSION}}"
KUBE_BINS=(kube-apiserver kube-controller-manager kube-scheduler)

log() { printf '[k8s-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else SUDO=(); fi
fi

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
    if [[ "${APT_UPDATED}" == 0 ]]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -q >&2
        APT_UPDATED=1
    fi
}
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        apt_update_once
        log "apt-get install ${missing[*]}"
        "${SUDO[@]}" apt-get install -y -q "${missing[@]}" >&2
    fi
}

have_kube_bins() {
    local b
    for b in "${KUBE_BINS[@]}"; do
        [[ -x "${CACHE_DIR}/${b}" ]] || return 1
    done
    "${CACHE_DIR}/kube-apiserver" --version 2>/dev/null | grep -q "v${K8S_VERSION}"
}

mkdir -p "${CACHE_DIR}"

# --------------------------------------------------------------------- etcd
ensure_etcd() {
    if [[ -x "${CACHE_DIR}/etcd" ]]; then
        return
    fi
    if [[ ! -x /usr/bin/etcd ]]; then
        apt_install etcd-server
        # The package may start (or enable) a system etcd on 2379; the tests
        # run their own etcd on free ports, so make sure none is left running.
        if command -v systemctl >/dev/null 2>&1; then
            if [[ -d /run/systemd/system ]]; then
                "${SUDO[@]}" systemctl stop etcd >/dev/null 2>&1 || true
            fi
            "${SUDO[@]}" systemctl disable etcd >/dev/null 2>&1 || true
        fi
        if [[ -x /etc/init.d/etcd ]]; then
            "${SUDO[@]}" /etc/init.d/etcd stop >/dev/null 2>&1 || true
            if command -v update-rc.d >/dev/null 2>&1; then
                "${SUDO[@]}" update-rc.d etcd disable >/dev/null 2>&1 || true
            fi
        fi
    fi
    [[ -x /usr/bin/etcd ]] || die "etcd-server did not provide /usr/bin/etcd"
    cp -f /usr/bin/etcd "${CACHE_DIR}/etcd.tmp"
    mv -f "${CACHE_DIR}/etcd.tmp" "${CACHE_DIR}/etcd"
    log "etcd: $("${CACHE_DIR}/etcd" --version 2>/dev/null | head -1)"
}

# ------------------------------------------------------- kube control plane
# Write deb-src stanzas derived from the machine's own apt sources into a
# private apt configuration (nothing under /etc/apt is modified).
write_src_sources() {
    local out="$1" f
    local deb822=(/etc/apt/sources.list.d/*.sources)
    [[ -e "${deb822[0]}" ]] || deb822=()
    if ((${#deb822[@]})); then
        # deb822: copy the stanzas signed by the Debian archive keyring (all
        # stanzas if none is), each turned into a deb-src stanza.
        # shellcheck disable=SC2016  # awk program, not shell
        local awkprog='
            function flush() {
                if (buf != "" && (all || buf ~ /debian-archive-keyring/)) printf "%s\n", buf
                buf = ""
            }
            FNR == 1 { flush() }
            /^[ \t]*$/ { flush(); next }
            { line = $0; if (tolower(line) ~ /^types:/) line = "Types: deb-src"; buf = buf line "\n" }
            END { flush() }'
        awk -v all=0 "${awkprog}" "${deb822[@]}" >"${out}"
        [[ -s "${out}" ]] || awk -v all=1 "${awkprog}" "${deb822[@]}" >"${out}"
        [[ -s "${out}" ]] && return
    fi
    # One-line format fallback (/etc/apt/sources.list, *.list).
    rm -f "${out}"
    local lst="${out%.sources}.list"
    : >"${lst}"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        sed -nE 's/^[[:space:]]*deb(-src)?([[:space:]])/deb-src\2/p' "$f" >>"${lst}"
    done
    [[ -s "${lst}" ]] || die "no apt sources found to derive deb-src entries from"
}

build_kube() {
    apt_install golang-go rsync make gcc libc6-dev dpkg-dev xz-utils ca-certificates
    local go_version
    go_version="$(go env GOVERSION 2>/dev/null || go version)"
    log "using ${go_version}"

    local work cleanup_work=0
    if [[ -n "${AICONTRACT_K8S_BUILD_DIR:-}" ]]; then
        work="${AICONTRACT_K8S_BUILD_DIR}"
        mkdir -p "${work}"
    else
        work="$(mktemp -d /var/tmp/aicontract-k8s-build.XXXXXX)"
        cleanup_work=1
    fi
    # shellcheck disable=SC2064
    if ((cleanup_work)); then trap "chmod -R u+w '${work}' 2>/dev/null; rm -rf '${work}'" EXIT; fi

    # Private apt state holding only the deb-src index.
    local aptdir="${work}/apt"
    mkdir -p "${aptdir}/lists/partial" "${aptdir}/cache/archives/partial" "${aptdir}/parts"
    local srclist="${aptdir}/src.sources"
    write_src_sources "${srclist}"
    [[ -f "${srclist}" ]] || srclist="${aptdir}/src.list"
    local apt_opts=(
        -o "Dir::Etc::sourcelist=${srclist}"
        -o "Dir::Etc::sourceparts=${aptdir}/parts"
        -o "Dir::State::Lists=${aptdir}/lists"
        -o "Dir::Cache=${aptdir}/cache"
        -o "APT::Sandbox::User=root"
    )
    log "apt-get update (private deb-src index)"
    # Tolerate failures of individual sources; `apt-get source` below fails
    # clearly if the kubernetes source package cannot be found.
    apt-get "${apt_opts[@]}" update -q >&2 || log "WARNING: apt-get update (deb-src) reported errors"

    local srcdir="${work}/src"
    rm -rf "${srcdir}"
    mkdir -p "${srcdir}"
    log "apt-get source kubernetes"
    (cd "${srcdir}" && apt-get "${apt_opts[@]}" source -q --download-only kubernetes >&2)
    local dscs=("${srcdir}"/kubernetes_*.dsc)
    local dsc="${dscs[0]}"
    [[ -f "${dsc}" ]] || die "apt-get source did not download a kubernetes .dsc"
    log "unpacking $(basename "${dsc}")"
    (cd "${srcdir}" && dpkg-source --no-check -x "$(basename "${dsc}")" tree >&2)
    rm -f "${srcdir}"/kubernetes_*.tar.* "${srcdir}"/kubernetes_*.dsc
    local tree="${srcdir}/tree"
    [[ -f "${tree}/Makefile" ]] || die "unexpected source layout in ${tree}"

    # Keep every Go cache inside the scratch dir (deleted afterwards).
    export GOPATH="${work}/gopath"
    export GOCACHE="${work}/gocache"
    export GOMODCACHE="${work}/gopath/pkg/mod"
    export GOFLAGS="-p=${AICONTRACT_K8S_JOBS:-$(nproc)}"
    export GOTOOLCHAIN=local
    export GOPROXY=off
    export GOSUMDB=off
    unset GOROOT || true

    log "building ${KUBE_BINS[*]} (takes several minutes)"
    local start=$SECONDS
    (
        cd "${tree}"
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" \
            KUBE_GIT_VERSION="v${K8S_VERSION}" KUBE_GIT_TREE_STATE=clean \
            GOLDFLAGS="-s -w" >&2
    )
    log "build finished in $((SECONDS - start))s"

    local outbin="${tree}/_output/bin" b
    [[ -d "${outbin}" ]] || outbin="${tree}/_output/local/bin/linux/$(go env GOARCH)"
    for b in "${KUBE_BINS[@]}"; do
        [[ -x "${outbin}/${b}" ]] || die "build did not produce ${b}"
        cp -f "${outbin}/${b}" "${CACHE_DIR}/${b}.tmp"
        mv -f "${CACHE_DIR}/${b}.tmp" "${CACHE_DIR}/${b}"
    done
    # (Go makes its module cache read-only; make it deletable first.)
    chmod -R u+w "${work}" 2>/dev/null || true
    if ((cleanup_work)); then
        rm -rf "${work}"
        trap - EXIT
    else
        rm -rf "${tree}" "${GOCACHE}" "${GOPATH}"
    fi
}

ensure_etcd
if have_kube_bins; then
    log "kube binaries already cached in ${CACHE_DIR}"
else
    build_kube
    have_kube_bins || die "built binaries do not report v${K8S_VERSION}"
fi
command -v openssl >/dev/null 2>&1 || apt_install openssl

log "$("${CACHE_DIR}/kube-apiserver" --version)"
echo "${CACHE_DIR}"
