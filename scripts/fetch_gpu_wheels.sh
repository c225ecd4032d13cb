#!/usr/bin/env bash
# Download the cp312 wheels the lent GPU machine lacks into DEST (default .whl/, git-ignored)
# for scripts/gpu_check.sh, and strip the debug info from carla's libcarla (184 MB -> 45 MB
# unpacked, 34 MB -> ~11 MB as a wheel) so the carried folder stays small. Needs network.
#   scripts/fetch_gpu_wheels.sh [DEST]
set -euo pipefail
DEST=${1:-.whl}
mkdir -p "$DEST"
PLAT="--platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d "$DEST" \
  carla==0.9.16 albumentations==2.0.8 albucore==0.0.24 pydantic==2.12.5 pydantic-core==2.41.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.15.0 simsimd==6.5.16 stringzilla==5.3.2 \
  tqdm==4.70.1 pyyaml==6.0.4 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-timeout==2.4.0 pygments==2.21.0 packaging==26.4
python3 - "$DEST" <<'PY'
"""Strip debug sections from libcarla inside the carla wheel and rewrite its RECORD entry."""
import base64, hashlib, subprocess, sys, tempfile, zipfile
from pathlib import Path
dest = Path(sys.argv[1])
for whl in dest.glob("carla-*.whl"):
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        so = next(n for n in names if n.startswith("carla/libcarla") and n.endswith(".so"))
        info = z.getinfo(so)
        if info.file_size < 100 << 20:
            print(f"{whl.name}: already stripped"); continue
        with tempfile.TemporaryDirectory() as td:
            raw = Path(td) / "lib.so"; raw.write_bytes(z.read(so))
            subprocess.run(["strip", "--strip-debug", str(raw)], check=True)
            data = raw.read_bytes()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        out = whl.with_suffix(".tmp")
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as w:
            for n in names:
                if n == so:
                    w.writestr(z.getinfo(n), data, compress_type=zipfile.ZIP_DEFLATED)
                elif n.endswith(".dist-info/RECORD"):
                    lines = [f"{so},sha256={digest},{len(data)}" if l.startswith(so + ",") else l
                             for l in z.read(n).decode().splitlines()]
                    w.writestr(z.getinfo(n), "\n".join(lines) + "\n", compress_type=zipfile.ZIP_DEFLATED)
                else:
                    w.writestr(z.getinfo(n), z.read(n), compress_type=zipfile.ZIP_DEFLATED)
    out.replace(whl)
    print(f"{whl.name}: libcarla stripped to {len(data) >> 20} MiB")
PY
du -sh "$DEST"
