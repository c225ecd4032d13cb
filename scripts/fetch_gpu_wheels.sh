#!/usr/bin/env bash
# Download the cp312 wheels the lent GPU machine lacks into DEST (default .whl/, git-ignored)
# for scripts/gpu_check.sh, and zero the debug sections of carla's libcarla (34 MB -> ~11 MB as a
# wheel) so the carried folder stays small. Zeroed, not stripped: the library was patchelf'd by
# auditwheel, and `strip` moves its trailing LOAD segments ("ELF load command address/offset not
# page-aligned" at import); zeroing keeps every offset and the zeros compress away. Needs network.
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
"""Zero the .debug* sections of libcarla inside the carla wheel and rewrite its RECORD entry."""
import base64, hashlib, struct, sys, zipfile
from pathlib import Path


def zero_debug(data: bytearray) -> int:
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "ELF64 little-endian only"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sh = lambda i: struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    stroff, n = sh(shstrndx)[4], 0
    for i in range(shnum):
        name, typ, flags, _, off, size = sh(i)
        nm = data[stroff + name:data.index(b"\0", stroff + name)].decode()
        if nm.startswith(".debug") and typ != 8 and not flags & 2:     # not NOBITS, not loaded
            data[off:off + size] = bytes(size)
            n += size
    return n


dest = Path(sys.argv[1])
for whl in dest.glob("carla-*.whl"):
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        so = next(n for n in names if n.startswith("carla/libcarla") and n.endswith(".so"))
        if z.getinfo(so).compress_size < 20 << 20:
            print(f"{whl.name}: debug sections already zeroed"); continue
        data = bytearray(z.read(so))
        zeroed = zero_debug(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        out = whl.with_suffix(".tmp")
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as w:
            for n in names:
                if n == so:
                    w.writestr(z.getinfo(n), bytes(data), compress_type=zipfile.ZIP_DEFLATED)
                elif n.endswith(".dist-info/RECORD"):
                    lines = [f"{so},sha256={digest},{len(data)}" if l.startswith(so + ",") else l
                             for l in z.read(n).decode().splitlines()]
                    w.writestr(z.getinfo(n), "\n".join(lines) + "\n", compress_type=zipfile.ZIP_DEFLATED)
                else:
                    w.writestr(z.getinfo(n), z.read(n), compress_type=zipfile.ZIP_DEFLATED)
    out.replace(whl)
    print(f"{whl.name}: {zeroed >> 20} MiB of debug sections zeroed in libcarla")
PY
du -sh "$DEST"
