"""A synchronous embedded world with a fixed step, for the simulator tests: the benchmark's own
set-up (:func:`carla_embedded.bench.sync_world`) with the step as the second argument."""
from carla_embedded.bench import sync_world as _bench_sync_world

DT = 0.05


def sync_world(town: str = "Embedded01", dt: float = DT):
    """(client, world) for ``town`` in synchronous mode with a fixed step of ``dt`` seconds."""
    return _bench_sync_world(town, delta_seconds=dt)
