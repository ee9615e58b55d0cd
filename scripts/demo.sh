#!/usr/bin/env bash
# The main job, end to end on this machine: install, export the graphs, build the model repository
# for the hardware at hand, start tritonserver, segment a real photo through the `escnet` ensemble,
# write an overlay PNG with a legend, stop the server.
#
# MODEL: escnet (default: both ensembles are exported and served, the photo goes to escnet) or
# catseg (only CAT-Seg: what the official checkpoints fill).
# Weights (optional, local files only): CHECKPOINT (whole ESC-Net / CAT-Seg checkpoint, for
# MODEL's variant), CLIP_CHECKPOINT (OpenAI / open_clip CLIP), SAM_CHECKPOINT (SAM .pth for the ESC
# blocks). Without them the model runs on a seeded random init and says so loudly: the picture
# then shows the pipeline working, not a meaningful segmentation. With CAT-Seg's official weights:
#   MODEL=catseg CHECKPOINT=/data/model_base.pth bash scripts/demo.sh
# Other settings: IMAGE (default: scikit-image's astronaut photo), CLASSES ("a; b, synonym; c"),
# OUT (build/demo), HTTP_PORT / GRPC_PORT / METRICS_PORT (18000-18002).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-build/demo}"
CLASSES="${CLASSES:-person; rocket, spaceship; flag; sky; wall}"
export HTTP_PORT="${HTTP_PORT:-18000}" GRPC_PORT="${GRPC_PORT:-18001}" METRICS_PORT="${METRICS_PORT:-18002}"

bash scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
mkdir -p "$OUT"

MODEL="${MODEL:-escnet}"
case "$MODEL" in
    escnet) ensembles=(escnet catseg); REPOSITORY="$ROOT/model_repository" ;;
    catseg) ensembles=(catseg); REPOSITORY="$ROOT/$OUT/model_repository" ;;  # CAT-Seg's models only
    *) echo "demo.sh: MODEL must be escnet or catseg, got '$MODEL'" >&2; exit 2 ;;
esac
echo "== export"
for ensemble in "${ensembles[@]}"; do
    weights=()
    if [ "$ensemble" = "$MODEL" ] && [ -n "${CHECKPOINT:-}" ]; then
        weights+=(--checkpoint "$CHECKPOINT")
    elif [ -n "${CLIP_CHECKPOINT:-}" ]; then
        weights+=(--clip-checkpoint "$CLIP_CHECKPOINT")
    fi
    if [ "$ensemble" = escnet ] && [ -n "${SAM_CHECKPOINT:-}" ] && [ -z "${CHECKPOINT:-}" ]; then
        weights+=(--sam-checkpoint "$SAM_CHECKPOINT")
    fi
    python -m escnet_export.onnx_graphs.export --variant "${ensemble}_vitb16_384" ${weights[@]+"${weights[@]}"}
done

echo "== build the model repository"
python -m escnet_export.triton_serving.repository --ensembles "${ensembles[@]}" --repository "$REPOSITORY"

echo "== start tritonserver"
PID_FILE="$ROOT/build/demo-tritonserver.pid"
LOG_FILE="$ROOT/build/demo-tritonserver.log"
export PID_FILE LOG_FILE
bash scripts/serve.sh --wait --model-repository "$REPOSITORY"
trap 'bash scripts/stop_server.sh --pid-file "$PID_FILE" || true' EXIT

IMAGE="${IMAGE:-$OUT/astronaut.png}"
if [ ! -f "$IMAGE" ]; then
    python -c "import sys; from PIL import Image; from skimage import data; Image.fromarray(data.astronaut()).save(sys.argv[1])" "$IMAGE"
fi

echo "== segment $IMAGE"
python -m escnet_client.cli "$IMAGE" --classes "$CLASSES" --url "127.0.0.1:$HTTP_PORT" --model "$MODEL" --out "$OUT" \
    --timeout 1800
echo "== done: $(ls "$OUT"/*_overlay.png)"
