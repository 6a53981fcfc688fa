"""The command-line programs' request for XLA's memory-minimising CPU schedule."""

import pytest
from jax._src import xla_bridge

from models import xla_setup


@pytest.fixture
def backend_not_started(monkeypatch):
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)


def test_adds_the_flag_to_other_flags(backend_not_started):
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_setup.prefer_memory_schedule(environ)
    assert environ["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=2 "
        "--xla_cpu_enable_concurrency_optimized_scheduler=false"
    )


def test_adds_the_flag_when_there_are_none(backend_not_started):
    environ = {}
    assert xla_setup.prefer_memory_schedule(environ)
    assert environ["XLA_FLAGS"] == xla_setup.MEMORY_SCHEDULE


def test_keeps_the_users_choice(backend_not_started):
    environ = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
    assert not xla_setup.prefer_memory_schedule(environ)
    assert environ["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"


def test_warns_when_jax_already_runs(monkeypatch):
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    environ = {}
    with pytest.warns(RuntimeWarning, match="before the first computation"):
        assert not xla_setup.prefer_memory_schedule(environ)
    assert "XLA_FLAGS" not in environ
