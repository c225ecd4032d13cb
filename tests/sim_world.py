"""A synchronous embedded world with a fixed step, set up as CARLA's own examples do (shared by the
simulator tests so each file does not carry its own copy)."""
from carla_embedded import Client

DT = 0.05


def sync_world(town: str = "Embedded01", dt: float = DT):
    """(client, world) for ``town`` in synchronous mode with a fixed step of ``dt`` seconds."""
    client = Client()
    world = client.load_world(town)
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, dt
    world.apply_settings(settings)
    return client, world
