"""The one episode lifecycle (carla_client.episode): towns, the ego car, cleanup and the stop rule."""
import pytest

import carla
import carla_embedded
from carla_client.episode import EgoSpec, StopRule, ensure_town, mount_transform, pick_vehicle, resolve_town, spawn_ego
from datasets.schema import CameraSpec, Mount

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def client():
    return carla_embedded.Client()


def _ours(world):
    return [a for a in world.get_actors() if a.type_id.startswith(("vehicle.", "sensor."))]


def test_ensure_town_reuses_the_loaded_world_and_loads_another(client):
    world, before = ensure_town(client, "Town02")
    again, before2 = ensure_town(client, "Town02")
    assert again.get_map().name.endswith("Town02") and before2 is None
    assert resolve_town(client, "town02") == "Town02"
    with pytest.raises(ValueError, match="unknown town 'Town99'; valid: .*Town02"):
        resolve_town(client, "Town99")


def test_spawn_ego_spawns_the_camera_of_the_spec_and_destroys_everything_even_on_error(client):
    world, _ = ensure_town(client, "Town02")
    spec = EgoSpec(camera=CameraSpec(320, 240, 110.0, Mount(x=1.0, z=1.6, pitch=-5.0)),
                   sensors=("sensor.other.lane_invasion",))
    start = world.get_map().get_spawn_points()[0]
    with pytest.raises(RuntimeError, match="boom"):
        with spawn_ego(world, spec, [start]) as ego:
            assert ego.camera.attributes["image_size_x"] == "320" and float(ego.camera.attributes["fov"]) == 110.0
            rel = ego.camera.get_transform().location.z - ego.vehicle.get_transform().location.z
            assert rel == pytest.approx(1.6, abs=0.05)
            assert set(ego.sensors) == {"sensor.other.lane_invasion"}
            assert len(_ours(world)) == 3
            raise RuntimeError("boom")
    assert _ours(world) == []


def test_spawn_ego_tries_the_candidates_in_order_and_says_how_many_were_occupied(client):
    world, _ = ensure_town(client, "Town02")
    start = world.get_map().get_spawn_points()[0]
    with spawn_ego(world, EgoSpec(camera=None), [start]) as first:
        with pytest.raises(RuntimeError, match="at 2 spawn point"):
            with spawn_ego(world, EgoSpec(camera=None), [start, start]):
                pass
        assert first.vehicle.is_alive
    assert _ours(world) == []


def test_pick_vehicle_prefers_four_wheelers_and_names_a_bad_filter(client):
    bl = client.get_world().get_blueprint_library()
    bp = pick_vehicle(bl, "vehicle.*")
    assert int(bp.get_attribute("number_of_wheels").as_int()) == 4
    with pytest.raises(ValueError, match="no vehicle blueprint matches 'vehicle.nothing'"):
        pick_vehicle(bl, "vehicle.nothing")


@pytest.mark.parametrize("kw,reason", [
    (dict(remaining_m=1.0, route_dist_m=0.0, speed_ms=10.0), "route_completed"),
    (dict(remaining_m=100.0, route_dist_m=31.0, speed_ms=10.0), "route_deviation"),
    (dict(remaining_m=100.0, route_dist_m=0.0, speed_ms=10.0), None),
])
def test_stop_rule_reasons(kw, reason):
    assert StopRule().check(0.05, **kw) == reason


def test_stop_rule_counts_stuck_time_after_warm_up_and_ticks():
    rule = StopRule(stuck_speed_ms=0.5, stuck_s=1.0, warmup_ticks=5)
    reasons = [rule.check(0.1, 0.0, 100.0, 0.0) for _ in range(16)]
    assert reasons[:15] == [None] * 15 and reasons[15] == "blocked"  # 5 warm-up ticks, then > 1.0 s
    limited = StopRule(max_ticks=3)
    assert [limited.check(0.05, 10.0, 100.0, 0.0) for _ in range(3)] == [None, None, "max_ticks"]


def test_the_simulator_bench_uses_the_contract_default_mount():
    """carla_embedded imports nothing of ours, so its bench keeps its own literal: it must stay the default."""
    from carla_embedded.bench import CAMERA_MOUNT

    default = mount_transform(CameraSpec().mount)
    assert (CAMERA_MOUNT.location.x, CAMERA_MOUNT.location.y, CAMERA_MOUNT.location.z) == \
        (default.location.x, default.location.y, default.location.z)
    assert (CAMERA_MOUNT.rotation.pitch, CAMERA_MOUNT.rotation.yaw) == (default.rotation.pitch, default.rotation.yaw)
