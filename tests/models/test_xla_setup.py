"""The command-line programs' request for XLA's memory-minimising CPU schedule, made only
where JAX will compute on the CPU."""

import jax
import pytest
from jax._src import xla_bridge

from models import xla_setup


@pytest.fixture
def backend_not_started(monkeypatch):
    """JAX not started yet, on a machine without accelerator plugins or JAX_PLATFORMS."""
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setattr(xla_setup, "_configured_platforms", lambda: "")
    monkeypatch.setattr(xla_setup, "accelerator_plugins", lambda: [])


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


@pytest.mark.parametrize("platforms, plugins, cpu", [
    ("", [], True),                       # nothing installed: the CPU
    ("", ["xla_cuda12"], False),          # pip install -e '.[cuda]' on a GPU machine
    ("cpu", ["xla_cuda12"], True),        # the user asks for the CPU
    ("cuda", [], False),
    ("cuda,cpu", [], False),              # the first platform listed is the default
    (" CPU ,cuda", ["xla_cuda12"], True),
])
def test_the_flag_only_where_jax_computes_on_the_cpu(backend_not_started, monkeypatch,
                                                    platforms, plugins, cpu):
    monkeypatch.setattr(xla_setup, "accelerator_plugins", lambda: plugins)
    environ = {"JAX_PLATFORMS": platforms} if platforms else {}
    assert xla_setup.runs_on_cpu(environ) is cpu
    assert xla_setup.prefer_memory_schedule(environ) is cpu
    assert ("XLA_FLAGS" in environ) is cpu


def test_jax_platforms_option_decides_before_the_environment(backend_not_started, monkeypatch):
    monkeypatch.setattr(xla_setup, "_configured_platforms", lambda: "cuda")
    assert not xla_setup.runs_on_cpu({"JAX_PLATFORMS": "cpu"})


def test_a_plugin_without_its_devices_leaves_jax_on_the_cpu(monkeypatch, tmp_path):
    plugins = tmp_path / "jax_plugins"
    (plugins / "xla_cuda12").mkdir(parents=True)
    (plugins / "xla_cuda12" / "__init__.py").write_text("")
    (plugins / "xla_myaccel").mkdir()
    (plugins / "xla_myaccel" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(xla_setup, "_DEVICE_FILES",
                        {"cuda": str(tmp_path / "nvidia[0-9]*"), "rocm": "/nonexistent"})
    found = xla_setup.accelerator_plugins()
    assert "xla_myaccel" in found and "xla_cuda12" not in found
    (tmp_path / "nvidia0").write_text("")
    assert "xla_cuda12" in xla_setup.accelerator_plugins()


def test_once_jax_runs_its_backend_decides(monkeypatch):
    jax.devices()  # starts the backends
    cpu = jax.default_backend() == "cpu"
    monkeypatch.setattr(xla_setup, "accelerator_plugins", lambda: [] if cpu else ["xla_cuda12"])
    assert xla_setup.runs_on_cpu({"JAX_PLATFORMS": "cuda" if cpu else "cpu"}) is cpu
