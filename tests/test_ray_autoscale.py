"""The engine deployment's autoscaling rule (pure: no Ray needed), ``--autoscale MIN:MAX``, and
``serve run``'s application builder arguments."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from chronoserve._serve_options import parse_autoscale
from chronoserve.ray.autoscale import PredictedWait, desired_replicas


def test_no_report_yet_keeps_the_replicas_there_are() -> None:
    assert desired_replicas(3, [], []) == 3.0


def test_the_predicted_wait_asks_for_replicas_that_hold_it_at_the_target() -> None:
    # Two replicas each 1.5 s behind: 3 s of work; at 0.5 s each that is 6 replicas.
    assert desired_replicas(2, [1.5, 1.5], [10, 10], target_wait_s=0.5, target_queue=64) == pytest.approx(6.0)
    # Idle: none needed (Ray's min_replicas and downscale delay then decide).
    assert desired_replicas(2, [0.0, 0.0], [0, 0]) == 0.0


def test_a_long_queue_of_cheap_requests_scales_too_and_the_larger_signal_wins() -> None:
    assert desired_replicas(1, [0.1], [256], target_wait_s=0.5, target_queue=64) == pytest.approx(4.0)
    # Requests waiting at the handles for a replica count as queued.
    assert desired_replicas(1, [0.1], [0], 128, target_wait_s=0.5, target_queue=64) == pytest.approx(2.0)


def test_the_policy_reads_the_replicas_reports_from_rays_context() -> None:
    ctx = SimpleNamespace(
        current_num_replicas=2,
        aggregated_metrics={"wait_seconds": {"r1": 2.0, "r2": 1.0}, "queued": {"r1": 5.0, "r2": 3.0}},
        total_queued_requests=0.0,
    )
    assert PredictedWait(target_wait_s=1.0)(ctx) == (pytest.approx(3.0), {})
    empty = SimpleNamespace(current_num_replicas=4, aggregated_metrics=None, total_queued_requests=None)
    assert PredictedWait()(empty) == (4.0, {})
    with pytest.raises(ValueError, match="positive"):
        PredictedWait(target_wait_s=0)


@pytest.mark.parametrize(("text", "bounds"), [("1:4", (1, 4)), ("0:2", (0, 2)), ("3:3", (3, 3))])
def test_autoscale_bounds(text: str, bounds: tuple[int, int]) -> None:
    assert parse_autoscale(text) == bounds


@pytest.mark.parametrize("text", ["4", "4:1", "0:0", "-1:2", "a:b", "1:", ":3"])
def test_bad_autoscale_bounds_are_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="MIN:MAX"):
        parse_autoscale(text)


requires_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")


@pytest.mark.ray
@requires_ray
def test_serve_runs_builder_takes_serves_options_by_name() -> None:
    from chronoserve.ray.ingress import build

    app = build({"policy": "batched", "max-queue": 10, "replicas": 3, "default_model": "random/chronos-bolt-tiny"})
    settings, engines = app._bound_deployment.init_args[:2]  # Ray's Application: the ingress, bound to the engines
    assert (settings.engine.policy, settings.engine.max_queue, settings.default_model) == (
        "batched",
        10,
        "random/chronos-bolt-tiny",
    )
    assert engines._bound_deployment._deployment_config.num_replicas == 3


@pytest.mark.ray
@requires_ray
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"policy": "nope"}, "unknown policy 'nope'"),
        ({"no_such_option": 1}, "unrecognized arguments: --no-such-option 1"),
        ({"autoscale": "3:1"}, "autoscale: expected MIN:MAX"),
        ({"replicas": "two"}, "replicas: expected a number, got 'two'"),
    ],
)
def test_a_bad_builder_argument_is_a_value_error_naming_it(args: dict, message: str) -> None:
    from chronoserve.ray.ingress import build

    with pytest.raises(ValueError, match="chronoserve args: ") as caught:
        build(args)
    assert message in str(caught.value)


@pytest.mark.ray
@requires_ray
@pytest.mark.parametrize("path", ["examples/ray/serve-config.yaml", "examples/ray/kuberay.yaml"])
def test_the_shipped_serve_configs_are_valid_and_build(path: str) -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from chronoserve.ray.ingress import build

    document = yaml.safe_load((Path(__file__).parent.parent / path).read_text())
    if document.get("kind") == "RayService":  # KubeRay: the Serve config is a string inside
        document = yaml.safe_load(document["spec"]["serveConfigV2"])
    config = ServeDeploySchema.model_validate(document)
    (application,) = config.applications
    assert application.import_path == "chronoserve.ray.ingress:build"
    build(application.args)  # every option known, every value valid
