#!/usr/bin/env bash
# Cross-architecture check of the C ticket reader: builds smask-c natively and, statically, for
# each target with its Debian cross compiler (through this folder's Makefile, -Werror included),
# runs the cross binaries under qemu-user and compares them on a corpus of tickets with the
# native build and the Python reader (tests/test_native_cross.py does the comparing).
#
#   runtime/c/cross-test.sh [--install] [--src DIR | --rev REV] [--out DIR] [TARGET...]
#
#   TARGET     armhf (32-bit ARM), s390x (big-endian, 64-bit), mips (big-endian, 32-bit) or
#              powerpc (qemu-ppc 7.2 cannot run its libm: SIGILL); default: armhf s390x mips
#   --install  apt-get install qemu-user and the targets' cross compilers first (root, Debian)
#   --src DIR  build the C sources in DIR instead of runtime/c (e.g. a patched copy)
#   --rev REV  build the C sources of git revision REV (git archive into the output folder)
#   --out DIR  build and work folder (default runtime/c/build-cross, removed and remade)
#
# Environment: PYTHON (default .venv/bin/python, else python3), MUTATIONS (mutated tickets in
# the corpus, default 120). Exit status 0 when every target built and matched, 1 otherwise.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
src=$here
out=$here/build-cross
rev=
install=0
targets=()
while [ $# -gt 0 ]; do
    case $1 in
        --install) install=1 ;;
        --src) src=$(cd "$2" && pwd); shift ;;
        --rev) rev=$2; shift ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "cross-test: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=(armhf s390x mips)

declare -A CC=([armhf]=arm-linux-gnueabihf-gcc [s390x]=s390x-linux-gnu-gcc [powerpc]=powerpc-linux-gnu-gcc [mips]=mips-linux-gnu-gcc)
declare -A QEMU=([armhf]=qemu-arm [s390x]=qemu-s390x [powerpc]=qemu-ppc [mips]=qemu-mips)
declare -A PKGS=([armhf]="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross" [s390x]="gcc-s390x-linux-gnu libc6-dev-s390x-cross"
                 [powerpc]="gcc-powerpc-linux-gnu libc6-dev-powerpc-cross" [mips]="gcc-mips-linux-gnu libc6-dev-mips-cross")
for t in "${targets[@]}"; do
    [ -n "${CC[$t]:-}" ] || { echo "cross-test: unknown target $t (armhf, s390x, powerpc, mips)" >&2; exit 2; }
done

if [ $install = 1 ]; then
    pkgs="qemu-user make gcc"
    for t in "${targets[@]}"; do pkgs="$pkgs ${PKGS[$t]}"; done
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs
fi

python=${PYTHON:-}
[ -n "$python" ] || { [ -x "$repo/.venv/bin/python" ] && python=$repo/.venv/bin/python || python=python3; }

start=$(date +%s)
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -n "$rev" ]; then
    git -C "$repo" archive "$rev" runtime/c | tar -x -C "$out"
    mkdir -p "$out/src" && mv "$out/runtime/c/"* "$out/src/" && rm -rf "$out/runtime"
    src=$out/src
fi
echo "cross-test: sources $src${rev:+ (revision $rev)}, output $out"

make -s -C "$src" BUILD="$out/native" >"$out/native.log" 2>&1 || { cat "$out/native.log"; echo "cross-test: native build failed" >&2; exit 1; }

specs=()
declare -A result
for t in "${targets[@]}"; do
    cc=${CC[$t]} qemu=${QEMU[$t]}
    if ! command -v "$cc" >/dev/null || ! command -v "$qemu" >/dev/null; then
        result[$t]="MISSING ($cc or $qemu not found; apt-get install qemu-user ${PKGS[$t]}, or pass --install)"
        continue
    fi
    t0=$(date +%s)
    if make -s -C "$src" CC="$cc" BUILD="$out/$t" EXTRA=-static >"$out/$t.build.log" 2>&1; then
        echo "cross-test: built $t with $cc in $(( $(date +%s) - t0 )) s"
        specs+=(--target "$t=$qemu:$out/$t/smask-c")
    else
        echo "cross-test: $t build failed ($cc, -Werror):" >&2
        grep -E 'error|warning' "$out/$t.build.log" >&2 || cat "$out/$t.build.log" >&2
        result[$t]="FAIL (build; log in $out/$t.build.log)"
    fi
done

status=0
if [ ${#specs[@]} -gt 0 ]; then
    set +e
    "$python" "$repo/tests/test_native_cross.py" --native "$out/native/smask-c" --work "$out/work" \
        --mutations "${MUTATIONS:-120}" "${specs[@]}" | tee "$out/compare.log"
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" = 0 ] || status=1
    for t in "${targets[@]}"; do
        line=$(grep -E "^$t: (PASS|FAIL)" "$out/compare.log" || true)
        [ -n "$line" ] && result[$t]=${line#"$t: "}
        [ -n "${result[$t]:-}" ] || { result[$t]="FAIL (no result; exit $rc)"; status=1; }
    done
fi

echo
echo "cross-test summary ($(( $(date +%s) - start )) s in all):"
for t in "${targets[@]}"; do
    r=${result[$t]:-}
    case $r in PASS*) ;; *) status=1 ;; esac
    printf '  %-8s %s\n' "$t" "$r"
done
exit $status
