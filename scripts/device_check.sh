#!/usr/bin/env bash
# The libspconv device check: NVIDIA's libspconv runs scn.fp16 / scn.int8 on this machine's GPU and its output is
# compared with our reference runner's (computed beforehand by scripts/prepare_device_check.py), after the
# architecture gate on this GPU. Needs only an NVIDIA driver and python3 (standard library): no network, no
# project environment. Usage:
#   scripts/device_check.sh [FOLDER (default build/device_check)] [--host-side]
# --host-side: a dry run here with the stand-in CUDA runtime (no kernel runs: zeros, "differ").
# Exit status: 0 all agree, 1 a file differs or the gate refuses, 2 the folder is missing or broken.
set -uo pipefail
cd "$(dirname "$0")/.."
folder="${1:-build/device_check}"
mode="${2:-}"
tolerance="${TRT_CENTERPOINT_DEVICE_TOLERANCE:-0.05}"
if [ ! -f "$folder/meta.txt" ]; then
    echo "device_check: $folder/meta.txt missing: run scripts/prepare_device_check.py first" >&2
    exit 2
fi
meta() { awk -v k="$1" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }' "$folder/meta.txt"; }
api="$(meta api)"; version="$(meta version)"; sass="$(meta sass)"; n="$(meta n)"; c="$(meta c)"; grid="$(meta grid)"

if [ "$mode" = "--host-side" ]; then
    cudart="$folder/standin"
    where="host-side build only: no kernel ran"
else
    cudart="$folder/cudart"
    cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')"
    name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
    if [ -z "$cap" ]; then
        echo "device_check: nvidia-smi gives no compute capability: no NVIDIA driver / GPU here" >&2
        exit 2
    fi
    where="on the GPU ($name, compute capability $cap)"
    # the gate: SASS for sm_XY runs on X.Z with Z >= Y (same major); no PTX, so nothing else runs
    major="${cap%.*}"; minor="${cap#*.}"; pick=""
    for sm in $sass; do
        if [ "$((sm / 10))" = "$major" ] && [ "$((sm % 10))" -le "$minor" ]; then pick="$sm"; fi
    done
    targets="$(printf 'sm_%s, ' $sass)"; targets="${targets%, }"
    if [ -z "$pick" ]; then
        echo "libspconv $version GPU code: $targets (no PTX: no JIT); $name ($cap) needs sm_${major}${minor}: refused"
        exit 1
    fi
    echo "libspconv $version GPU code: $targets (no PTX: no JIT); $name ($cap) runs sm_$pick: ok"
fi

export LD_LIBRARY_PATH="$cudart:$folder/lib"
# our caller was compiled where the folder was prepared; where it cannot start (an older C library), recompile
"$folder/spconv_run" > /dev/null 2>&1
if [ $? -ne 3 ]; then
    source="trt_centerpoint/runtime/libspconv/native/spconv_run${api/./}.cpp"
    echo "device_check: the prepared caller does not start here; recompiling $source with g++"
    g++ -std=c++14 -O1 -o "$folder/spconv_run.local" "$source" -I"$folder/include" -L"$folder/lib" -lspconv \
        -Wl,--allow-shlib-undefined || { echo "device_check: cannot compile our caller here" >&2; exit 2; }
    mv "$folder/spconv_run.local" "$folder/spconv_run"
fi
export TRTCP_SPCONV_VERBOSE=1
status=0
for precision in fp16 int8; do
    compute="$(awk -v p="$precision" '$1 == "file" && $2 == p { print $3 }' "$folder/meta.txt")"
    if [ "$api" = "1.0" ]; then
        net=("$folder/$precision.onnx")
    else
        net=("$folder/$precision.net.txt" "$folder/$precision.weights.bin")
    fi
    log="$folder/$precision.log"
    start=$(date +%s.%N)
    timeout 240 "$folder/spconv_run" forward "${net[@]}" "$compute" "$folder/features.bin" "$folder/indices.bin" \
        "$n" "$c" "$grid" "$folder/$precision.output.bin" > "$log" 2>&1
    rc=$?
    seconds=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    if [ $rc -ne 0 ]; then
        echo "scn.$precision.onnx: libspconv $version exit status $rc after $seconds s ($where); last lines:"
        tail -n 3 "$log" | sed 's/\x1b\[[0-9;]*m//g'
        status=1
        continue
    fi
    dtype="$(awk '/^trtcp: output/ { print $3 }' "$log")"
    case "$dtype" in Int8|int8) dtype=int8 ;; *) dtype=float16 ;; esac
    python3 scripts/device_compare.py "$folder/$precision.reference.bin" "$folder/$precision.output.bin" "$dtype" \
        "$tolerance" "scn.$precision.onnx ($where, build + forward $seconds s)" || status=1
done
exit $status
