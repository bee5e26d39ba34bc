"""The synchronous SDK's public names are pinned, and its API stays the asynchronous one's,
blocking: same methods, same parameters."""

from __future__ import annotations

import inspect
from importlib import resources

import pytest

import perdure
from perdure import NotStartedError, sync


def test_sync_public_api__is_pinned() -> None:
    assert sorted(sync.__all__) == ["DurableFunction", "JobContext", "JobHandle", "Perdure", "Schedules", "context"]


# The sync classes and the async ones they mirror, with the methods only the sync one has.
MIRRORS = [
    (sync.Perdure, perdure.Perdure, {"close", "run_worker"}),
    (sync.DurableFunction, perdure.DurableFunction, set()),
    (sync.JobHandle, perdure.JobHandle, set()),
    (sync.Schedules, perdure.Schedules, set()),
    (sync.JobContext, perdure.JobContext, set()),
]


def _public(cls: type) -> dict[str, object]:
    return {name: value for name, value in inspect.getmembers(cls) if not name.startswith("_")}


@pytest.mark.parametrize(("mine", "theirs", "extra"), MIRRORS, ids=[m[0].__name__ for m in MIRRORS])
def test_sync_api__has_every_method_of_the_async_one_with_the_same_parameters(mine, theirs, extra) -> None:
    own, mirrored = _public(mine), _public(theirs)
    methods = {name for name, value in mirrored.items() if inspect.isfunction(value)}
    assert methods <= set(own), f"missing in perdure.sync.{mine.__name__}: {sorted(methods - set(own))}"
    assert {name for name, value in own.items() if inspect.isfunction(value) and name not in mirrored} == extra
    for name in sorted(methods):
        ours, async_one = inspect.signature(own[name]), inspect.signature(mirrored[name])
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
               [(p.name, p.kind, p.default) for p in async_one.parameters.values()], name
        assert not inspect.iscoroutinefunction(own[name]), f"{mine.__name__}.{name} must block, not be async"


def test_sync_context__is_a_plain_function_like_the_async_one() -> None:
    assert inspect.signature(sync.context) == inspect.signature(perdure.context).replace(
        return_annotation=inspect.signature(sync.context).return_annotation)
    with pytest.raises(perdure.NotInJobError):
        sync.context()


def test_constructor__takes_the_async_clients_arguments_and_checks_them_alike() -> None:
    assert inspect.signature(sync.Perdure) == inspect.signature(perdure.Perdure)
    with pytest.raises(ValueError, match="not both"):
        sync.Perdure(address="127.0.0.1:7433", storage="postgresql://db/app")
    with pytest.raises(ValueError, match="worker_concurrency"):
        sync.Perdure(address="127.0.0.1:7433", worker_concurrency=0)


def test_durable__checks_its_options_when_declared() -> None:
    client = sync.Perdure(address="127.0.0.1:7433")
    with pytest.raises(ValueError, match="max_attempts"):
        client.durable("x", max_attempts=0)

    @client.durable("x")
    def x(a: int) -> int:
        return a

    assert x.name == "x" and x.fn(2) == 2 and x.__name__ == "x" and x.aio.name == "x"
    with pytest.raises(ValueError, match="already registered"):
        client.durable("x")(lambda: None)
    with pytest.raises(ValueError, match="priority"):
        x.options(priority=5000)


def test_closed_client__refuses_every_call_without_starting() -> None:
    client = sync.Perdure(address="127.0.0.1:9")  # nothing listens there: nothing may be tried
    client.close()
    client.close()
    for call in (client.start, lambda: client.enqueue("x"), lambda: client.handle("j").status(),
                 lambda: client.schedules.get("s"), lambda: client.emit_event("e")):
        with pytest.raises(NotStartedError, match="closed"):
            call()


def test_package__is_marked_typed() -> None:
    assert resources.files("perdure").joinpath("py.typed").is_file()
