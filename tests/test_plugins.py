"""Policy discovery and validation: entry points, ``module:Class``, and the errors they give."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from importlib.metadata import EntryPoint

import pytest

from chronoserve import plugins
from chronoserve.errors import PolicyError
from chronoserve.plugins import available_policies, load_policy, validate_policy
from chronoserve.policies import BatchedPolicy, LRUPolicy, NaivePolicy
from chronoserve.policy import Policy
from chronoserve.testing import FakeLoader, fake_engine


def test_builtins_are_ordinary_entry_point_plugins():
    found = available_policies()
    assert found["naive"] == "chronoserve.policies.naive:NaivePolicy"
    assert found["lru"] == "chronoserve.policies.lru:LRUPolicy"
    assert found["batched"] == "chronoserve.policies.batched:BatchedPolicy"


@pytest.mark.parametrize(("name", "cls"), [("naive", NaivePolicy), ("lru", LRUPolicy), ("batched", BatchedPolicy)])
def test_load_builtin_by_name(name, cls):
    assert type(load_policy(name)) is cls


def test_options_reach_the_constructor():
    policy = load_policy("batched", {"max_batch": 7, "max_wait": "25ms", "memory_budget": "1GiB"})
    assert (policy.max_batch, policy.max_wait, policy.memory_budget) == (7, 0.025, 2**30)


def test_unknown_option_names_the_plugin_and_what_it_accepts():
    with pytest.raises(PolicyError) as info:
        load_policy("lru", {"max_batch": 4})
    message = str(info.value)
    assert "'lru'" in message and "max_batch" in message and "max_resident" in message


def test_bad_option_value_names_the_plugin():
    with pytest.raises(PolicyError, match=r"'batched'.*max_batch must be"):
        load_policy("batched", {"max_batch": 0})


def test_unknown_policy_lists_the_installed_ones():
    with pytest.raises(PolicyError, match=r"unknown policy 'fastest'.*batched.*lru.*naive"):
        load_policy("fastest")


def test_module_colon_class_goes_through_the_same_validator():
    assert type(load_policy("chronoserve.policies.lru:LRUPolicy", {"max_resident": 1})) is LRUPolicy
    with pytest.raises(PolicyError, match="has no attribute 'Nope'"):
        load_policy("chronoserve.policies.lru:Nope")
    with pytest.raises(PolicyError, match="cannot import module 'no_such_module'"):
        load_policy("no_such_module:X")
    with pytest.raises(PolicyError, match="must be a class"):
        load_policy("chronoserve.policies.lru:parse_bytes")


class _NoName:
    def decide(self, state, now):
        return []


class _NoDecide:
    name = "nodecide"


class _AsyncDecide:
    name = "async"

    async def decide(self, state, now):
        return []


class _WrongSignature:
    name = "wrong"

    def decide(self, state):
        return []


class _Inherits(Policy):
    name = "inherits"


class _NoDescribe:
    name = "nodescribe"

    def decide(self, state, now):
        return []


class _DescribeWithArgs:
    name = "describeargs"

    def decide(self, state, now):
        return []

    def describe(self, verbose):
        return {}


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_NoName, "class attribute `name`"),
        (_NoDecide, "no method `decide"),
        (_AsyncDecide, "not async"),
        (_WrongSignature, r"must accept \(self, state, now\)"),
        (_Inherits, "does not implement"),
        (_NoDescribe, r"no method `describe\(self\)`"),
        (_DescribeWithArgs, "no argument but self"),
    ],
)
def test_validator_says_what_is_wrong(cls, message):
    with pytest.raises(PolicyError, match=message) as info:
        validate_policy(cls, "my-plugin")
    assert "'my-plugin'" in str(info.value)
    assert cls.__qualname__ in str(info.value)


def test_entry_point_discovery_with_a_fake_distribution(monkeypatch):
    module = types.ModuleType("fake_policy_pkg")

    class Fifo(Policy):
        name = "fifo"

        def decide(self, state, now):
            return []

    module.Fifo = Fifo
    monkeypatch.setitem(sys.modules, "fake_policy_pkg", module)
    fake = EntryPoint(name="fifo", value="fake_policy_pkg:Fifo", group=plugins.GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [fake] if group == plugins.GROUP else [])
    assert available_policies() == {"fifo": "fake_policy_pkg:Fifo"}
    assert type(load_policy("fifo")) is Fifo
    broken = EntryPoint(name="broken", value="fake_policy_pkg:Missing", group=plugins.GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [broken])
    with pytest.raises(PolicyError, match="'broken'.*failed to load"):
        load_policy("broken")


def test_a_policy_instance_is_used_as_is():
    policy = BatchedPolicy(max_batch=3)
    assert load_policy(policy) is policy
    with pytest.raises(PolicyError, match="instance"):
        load_policy(policy, {"max_batch": 4})


def _example_installed() -> bool:
    return "eager" in available_policies()


@pytest.mark.skipif(
    not _example_installed() and not os.environ.get("CI"), reason="examples/policy-plugin not installed"
)
async def test_the_example_third_party_package_plugs_in():
    assert _example_installed(), "CI installs examples/policy-plugin; it must be discoverable"
    policy = load_policy("eager", {"max_batch": 4})
    assert policy.name == "eager"
    loader = FakeLoader()
    async with fake_engine(policy, loader=loader) as engine:
        results = await engine.forecast_many(
            [
                # Real ForecastRequest objects: the plugin is used through the public API only.
                __import__("chronoserve").ForecastRequest(model="fake", target=[1.0, float(i)], horizon=2)
                for i in range(10)
            ]
        )
    assert [float(r.median[0]) for r in results] == [float(i) for i in range(10)]
    assert max(loader.batch_sizes()) <= 4


def test_importing_chronoserve_does_not_import_torch():
    code = (
        "import sys, chronoserve, chronoserve.engine, chronoserve.testing\n"
        "engine = chronoserve.Engine('batched')\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
