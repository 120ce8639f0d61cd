#!/usr/bin/env bash
# The project's OCI images, built without Docker and without pulling a base image:
#
#   images.sh build        static (musl) release builds of activity-operator and activity-worker, the
#                          pause binary (deploy/local/pause/pause.c), then buildah builds the images from
#                          operator/Dockerfile, worker-image/Dockerfile and deploy/local/pause/Dockerfile
#                          into OCI layouts under $out/oci/<name>
#   images.sh push HOST:PORT   copies those layouts (skopeo) to a plain-HTTP registry as
#                          HOST:PORT/heartbeat-dev/activity-operator:<tag>, …/activity-worker:<tag>,
#                          pause:1 (the local sandbox image) and library/busybox:latest (for tests)
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
  echo "$version" >"$out/version"
  log "built in $((SECONDS - started))s: $(sizes)"
}

sizes() {
  local n text="" d
  for n in activity-operator activity-worker pause busybox; do
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
  for n in activity-operator activity-worker pause busybox; do
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
