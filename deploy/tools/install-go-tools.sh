#!/usr/bin/env bash
# Installs the pinned Go tools that the deploy tests use (helm, kubeconform, promtool and the Prometheus server) into
# .cache/go-tools/, which git ignores.
#
#   deploy/tools/install-go-tools.sh    # prints the folder holding the tools, on its last line of output
#
# Idempotent: a tool already installed there at its pinned version is left alone (a stamp file per tool records the
# version, so bumping a pin below rebuilds that tool only). The first build of helm downloads its modules and
# compiles the Kubernetes client libraries: about 4 minutes on 2 cores; kubeconform takes about 10 s; promtool about
# 6 minutes, and the Prometheus server, sharing most of its packages, about 2 more (measured: 16 and 3 minutes on a
# 2-core machine busy with other builds). With Go's module and build caches warm (a second clone on the same
# machine), all of them take well under a minute.
#
# Needs Go 1.24+ (`go` on PATH, or /usr/local/go/bin/go) and the Go module proxy. GOPATH, GOMODCACHE and GOCACHE are
# Go's defaults. Environment: GO (the go command to use), GO_TOOLS_DIR (default <repo>/.cache/go-tools).
set -euo pipefail

HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.7.0
# Prometheus's Go module tags are v0.3MM.P for release v3.MM.P. promtool checks and unit-tests the alert rules; the
# server (built without the `builtinassets` tag, so without its web UI, which nothing here uses) runs the live test.
PROMETHEUS_VERSION=v0.316.0

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools_dir="${GO_TOOLS_DIR:-$repo_root/.cache/go-tools}"

go_cmd="${GO:-}"
if [[ -z "$go_cmd" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_cmd="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_cmd=/usr/local/go/bin/go
    fi
fi
if [[ -z "$go_cmd" ]] || ! "$go_cmd" version >/dev/null 2>&1; then
    echo "install-go-tools: Go is not installed (no 'go' on PATH nor /usr/local/go/bin/go): install Go 1.24+" >&2
    exit 3
fi

mkdir -p "$tools_dir"

install_tool() { # name package@version
    local name="$1" package="$2"
    local version="${package##*@}"
    local stamp="$tools_dir/.$name.version"
    if [[ -x "$tools_dir/$name" && -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
        return 0
    fi
    echo "install-go-tools: go install $package (the first time takes minutes)" >&2
    local started=$SECONDS
    # Static binaries (no C toolchain needed), built outside of any Go module or workspace, so that nothing here
    # changes which versions are built.
    (cd "$tools_dir" && GOBIN="$tools_dir" CGO_ENABLED=0 GOWORK=off "$go_cmd" install "$package")
    echo "$version" >"$stamp"
    echo "install-go-tools: $name $version installed in $((SECONDS - started)) s" >&2
}

install_tool helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
install_tool kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
install_tool promtool "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
install_tool prometheus "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION"

echo "$tools_dir"
