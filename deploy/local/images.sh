#!/usr/bin/env bash
# The project's OCI images, built without Docker and without pulling a base image:
#
#   images.sh build        static (musl) release builds of activity-operator and activity-worker, the
#                          pause binary (deploy/local/pause/pause.c), then buildah builds the images from
#                          operator/Dockerfile, worker-image/Dockerfile and deploy/local/pause/Dockerfile
#                          into OCI layouts under $out/oci/<name>; then the SDK examples' images:
#                          activity-example-go (sdk/go/examples/longrunning, a static Go binary) and
#                          activity-example-python (sdk/python/examples: Debian's python3 with its
#                          libraries, the kubernetes client from PyPI, the SDK and the example)
#   images.sh push HOST:PORT   copies those layouts (skopeo) to a plain-HTTP registry as
#                          HOST:PORT/heartbeat-dev/activity-operator:<tag>, …/activity-worker:<tag>,
#                          …/activity-example-go:<tag>, …/activity-example-python:<tag>, pause:1 (the
#                          local sandbox image) and library/busybox:latest (for tests)
#   images.sh dir          prints $out
#
# $out is $CARGO_TARGET_DIR/images (CARGO_TARGET_DIR defaults to <repo>/target). The tag is the chart's
# appVersion (which tests/tests/chart.rs keeps equal to the crate version). The build context of the
# two Dockerfiles is $out/context: <TARGETARCH>/activity-operator, <TARGETARCH>/activity-worker and
# <TARGETARCH>/busybox-root/ (a static busybox and its applet links), the layout the release workflow
# (.github/workflows/release.yml) lays out for each architecture too.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
[[ $target_dir == /* ]] || target_dir=$repo/$target_dir
out=$target_dir/images
triple=x86_64-unknown-linux-musl
arch=amd64
# The pause image's own version (it is not the project's; bump when pause.c changes).
pause_tag=1

log() { echo "images: $*" >&2; }
die() {
  echo "images: ERROR: $*" >&2
  exit 1
}

chart_version() { awk '$1 == "appVersion:" {gsub(/"/, "", $2); print $2; exit}' "$repo/charts/activity-operator/Chart.yaml"; }

# Fails (naming the file) when an ELF binary asks for a program interpreter, i.e. is not static.
check_static() {
  local f
  for f in "$@"; do
    LC_ALL=C readelf -lW "$f" | grep -q 'Requesting program interpreter' && die "$f is dynamically linked"
    LC_ALL=C readelf -dW "$f" 2>/dev/null | grep -q '(NEEDED)' && die "$f needs shared libraries"
  done
  return 0
}

need_tools() {
  local t missing=()
  for t in buildah skopeo musl-gcc readelf; do command -v "$t" >/dev/null || missing+=("$t"); done
  [[ -x /bin/busybox && $(readelf -lW /bin/busybox 2>/dev/null) != *interpreter* ]] || missing+=("static /bin/busybox")
  ((${#missing[@]} == 0)) || die "missing ${missing[*]} (Debian: apt-get install buildah skopeo musl-tools binutils busybox-static)"
  rustup target list --installed 2>/dev/null | grep -qx "$triple" ||
    die "the Rust target $triple is missing (rustup target add $triple)"
}

# buildah with its own storage (vfs: no overlay mounts, works inside any container or VM) under $out.
bh() { buildah --storage-driver vfs --root "$out/storage" --runroot "$out/runroot" "$@"; }

build_image() { # name dockerfile context
  local name=$1 file=$2 ctx=$3 ref="localhost/activity-build/$1:build"
  log "buildah bud -f ${file#"$repo"/} ($name)"
  bh bud --quiet --layers=false --timestamp "$SOURCE_DATE_EPOCH" --format oci \
    --build-arg "TARGETARCH=$arch" --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    -f "$file" -t "$ref" "$ctx" >/dev/null
  rm -rf "$out/oci/$name"
  mkdir -p "$out/oci"
  bh push --quiet "$ref" "oci:$out/oci/$name:$tag_of_name" >/dev/null
  bh rmi "$ref" >/dev/null
}

cmd_build() {
  local started=$SECONDS ctx rel applet
  need_tools
  version=$(chart_version)
  [[ -n $version ]] || die "cannot read appVersion from charts/activity-operator/Chart.yaml"
  revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
  # The last commit's time, so two builds of one commit produce the same image digests.
  export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}

  log "cargo build --release --target $triple (activity-operator, activity-worker)"
  (cd "$repo" && CC_x86_64_unknown_linux_musl=musl-gcc CARGO_TARGET_DIR=$target_dir \
    cargo build --release --locked --target "$triple" -p activity-operator -p activity-worker \
    --bin activity-operator --bin activity-worker) || die "cargo build failed"
  rel=$target_dir/$triple/release

  ctx=$out/context
  rm -rf "$ctx"
  mkdir -p "$ctx/$arch/busybox-root/bin" "$ctx/$arch/busybox-root/tmp" "$ctx/pause"
  install -m 0755 "$rel/activity-operator" "$rel/activity-worker" "$ctx/$arch/"
  musl-gcc -static -Os -s -o "$ctx/pause/pause" "$here/pause/pause.c"
  check_static "$ctx/$arch/activity-operator" "$ctx/$arch/activity-worker" "$ctx/pause/pause" /bin/busybox
  # The worker image's shell and tools: Debian's static busybox plus one link per applet.
  install -m 0755 /bin/busybox "$ctx/$arch/busybox-root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -s busybox "$ctx/$arch/busybox-root/bin/$applet"
  done
  chmod 1777 "$ctx/$arch/busybox-root/tmp"
  # Same bytes, same mtimes: buildah --timestamp stamps the layer files, this keeps the context equal too.
  find "$ctx" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

  tag_of_name=$version build_image activity-operator "$repo/operator/Dockerfile" "$ctx"
  tag_of_name=$version build_image activity-worker "$repo/worker-image/Dockerfile" "$ctx"
  tag_of_name=$pause_tag build_image pause "$here/pause/Dockerfile" "$ctx/pause"
  tag_of_name=latest build_image busybox "$here/busybox/Dockerfile" "$ctx/$arch/busybox-root"
  example_contexts
  tag_of_name=$version build_image activity-example-go "$repo/sdk/go/examples/longrunning/Dockerfile" "$ctx"
  tag_of_name=$version build_image activity-example-python "$repo/sdk/python/examples/Dockerfile" "$ctx"
  echo "$version" >"$out/version"
  log "built in $((SECONDS - started))s: $(sizes)"
}

# The examples' build context beside the project's: <arch>/longrunning (Go, static) and
# <arch>/python-root + python-app (Python).
example_contexts() {
  log "go build sdk/go/examples/longrunning (CGO_ENABLED=0, static)"
  (cd "$repo/sdk/go" && CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags='-s -w' \
    -o "$ctx/$arch/longrunning" ./examples/longrunning) || die "go build of the Go example failed"
  check_static "$ctx/$arch/longrunning"
  python_root "$ctx/$arch/python-root"
  mkdir -p "$ctx/python-app"
  cp -r "$repo/sdk/python/src/heartbeat_activity" "$ctx/python-app/"
  cp "$repo/sdk/python/examples/record_processor.py" "$ctx/python-app/"
  find "$ctx/python-app" -name __pycache__ -prune -exec rm -rf {} +
  /usr/bin/python3 -m compileall -q "$ctx/python-app" >/dev/null
  find "$ctx" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# A Python runtime for a scratch image: Debian's /usr/bin/python3 (no image can be pulled here), its
# standard library without tests, IDLE, tkinter and ensurepip, the kubernetes client and its
# dependencies from PyPI for that Python version (binary wheels only), byte-compiled, and every
# shared library that ldd names for the interpreter and the extension modules, at the same paths.
python_root() { # dir
  local root=$1 py=/usr/bin/python3 ver real pip lib
  [[ -x $py ]] || die "$py is missing (Debian: apt-get install python3)"
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  real=$(readlink -f "$py")
  rm -rf "$root"
  mkdir -p "$root/usr/bin" "$root/usr/lib/python3/dist-packages" "$root/tmp"
  chmod 1777 "$root/tmp"
  install -m 0755 "$real" "$root/usr/bin/python$ver"
  ln -s "python$ver" "$root/usr/bin/python3"
  tar -C / --exclude="usr/lib/python$ver/test" --exclude="usr/lib/python$ver/idlelib" \
    --exclude="usr/lib/python$ver/tkinter" --exclude="usr/lib/python$ver/turtledemo" \
    --exclude="usr/lib/python$ver/ensurepip" --exclude="usr/lib/python$ver/lib2to3" \
    --exclude="usr/lib/python$ver/config-*" --exclude=__pycache__ --exclude="usr/lib/python$ver/dist-packages" \
    --exclude="usr/lib/python$ver/site-packages" -cf - "usr/lib/python$ver" | tar -C "$root" -xf -
  # pip from the SDK suite's virtualenv (the Makefile's VENV) when there is one, else a new one here.
  pip=${ACTIVITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/activity-operator}/venv/bin/pip
  if [[ ! -x $pip ]]; then
    [[ -x $out/pip-venv/bin/pip ]] || python3 -m venv "$out/pip-venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    pip=$out/pip-venv/bin/pip
  fi
  log "pip install --target … kubernetes (for Python $ver, binary wheels)"
  "$pip" install --quiet --disable-pip-version-check --no-compile --target "$root/usr/lib/python3/dist-packages" \
    --python-version "$ver" --implementation cp --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    "kubernetes>=29" >"$out/pip.log" 2>&1 || { tail -n 20 "$out/pip.log" >&2; die "pip install of the kubernetes client failed"; }
  rm -rf "$root/usr/lib/python3/dist-packages/bin"
  "$py" -m compileall -q -j 2 "$root/usr/lib/python$ver" "$root/usr/lib/python3/dist-packages" >/dev/null 2>&1 || true
  # The shared libraries (the loader included) the interpreter and its extension modules need.
  { echo "$real"; find "$root" -name '*.so*' -type f; } | xargs -r ldd 2>/dev/null |
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(0x/ {print $1}' | sort -u | while read -r lib; do
    [[ $lib == "$root"/* ]] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  [[ -e $root/lib64/ld-linux-x86-64.so.2 ]] || die "the dynamic loader did not land in $root"
  PYTHONHOME= "$root/lib64/ld-linux-x86-64.so.2" --library-path "$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu" \
    "$root/usr/bin/python$ver" -I -c 'import ssl, json, asyncio' ||
    die "the image's python3 does not start with its own libraries"
}

sizes() {
  local n text="" d
  for n in activity-operator activity-worker pause busybox activity-example-go activity-example-python; do
    d=$out/oci/$n
    [[ -d $d ]] || continue
    text+="$n $(du -sk --apparent-size "$d/blobs" | awk '{printf "%.1f MB", $1 / 1024}'), "
  done
  echo "${text%, }"
}

cmd_push() {
  local registry=$1 version n tag
  [[ -f $out/version ]] || die "no images built yet (run: make images)"
  version=$(<"$out/version")
  for n in activity-operator activity-worker pause busybox activity-example-go activity-example-python; do
    [[ -d $out/oci/$n ]] || die "$out/oci/$n is missing (run: make images)"
    # The repository paths that containerd's mirrors ask for: ghcr.io/heartbeat-dev/<n>,
    # activity.local/pause (the sandbox image), docker.io/library/busybox.
    local dest=$registry/heartbeat-dev/$n:$version
    [[ $n == pause ]] && dest=$registry/pause:$pause_tag
    [[ $n == busybox ]] && dest=$registry/library/busybox:latest
    tag=${dest##*:}
    skopeo copy --quiet --dest-tls-verify=false "oci:$out/oci/$n:$tag" "docker://$dest" >/dev/null ||
      die "skopeo copy to docker://$dest failed"
    log "pushed $dest"
  done
}

case ${1:-} in
  build) cmd_build ;;
  push)
    [[ -n ${2:-} ]] || die "usage: images.sh push HOST:PORT"
    cmd_push "$2"
    ;;
  dir) echo "$out" ;;
  *)
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
