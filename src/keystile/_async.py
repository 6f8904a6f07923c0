"""``AsyncKeystile``: the async face of :class:`Keystile`.

Verification runs the shared flow under asyncio. Management calls run the sync
method unchanged: inline for a store that never blocks, in a worker thread for one
that does. No management logic is written twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._manage import Keystile
from ._models import VerifyResult
from .stores import Store

__all__ = ["AsyncKeystile"]

P = ParamSpec("P")
R = TypeVar("R")


def _offloaded(
    method: Callable[Concatenate[Keystile, P], R],
) -> Callable[Concatenate[AsyncKeystile, P], Awaitable[R]]:
    async def call(self: AsyncKeystile, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.sync.verifier.astore.run(lambda: method(self.sync, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class AsyncKeystile:
    """Every method of :class:`Keystile`, awaitable.

    >>> import asyncio
    >>> async def main() -> bool:
    ...     ks = AsyncKeystile("memory://")
    ...     api = await ks.create_api("demo", prefix="sk_demo")
    ...     created = await ks.create_key(api.id)
    ...     return (await ks.verify(created.key)).valid
    >>> asyncio.run(main())
    True
    """

    def __init__(self, store: Store | str | None = None, **options: Any) -> None:
        self.sync = Keystile(store, **options)
        self.store = self.sync.store

    def __repr__(self) -> str:
        return f"AsyncKeystile({self.store!r})"

    async def verify(self, key: str, **request: Any) -> VerifyResult:
        return await self.sync.verifier.verify_async(key, **request)

    async def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> AsyncKeystile:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    whoami = _offloaded(Keystile.whoami)
    create_api = _offloaded(Keystile.create_api)
    get_api = _offloaded(Keystile.get_api)
    list_apis = _offloaded(Keystile.list_apis)
    get_keyspace = _offloaded(Keystile.get_keyspace)
    update_api = _offloaded(Keystile.update_api)
    delete_api = _offloaded(Keystile.delete_api)
    create_key = _offloaded(Keystile.create_key)
    get_key = _offloaded(Keystile.get_key)
    list_keys = _offloaded(Keystile.list_keys)
    update_key = _offloaded(Keystile.update_key)
    delete_key = _offloaded(Keystile.delete_key)
    reroll_key = _offloaded(Keystile.reroll_key)
    recover_key = _offloaded(Keystile.recover_key)
    rotate_master_key = _offloaded(Keystile.rotate_master_key)
    rotate_data_key = _offloaded(Keystile.rotate_data_key)
    update_credits = _offloaded(Keystile.update_credits)
    update_refill = _offloaded(Keystile.update_refill)
    add_permissions = _offloaded(Keystile.add_permissions)
    remove_permissions = _offloaded(Keystile.remove_permissions)
    add_roles = _offloaded(Keystile.add_roles)
    remove_roles = _offloaded(Keystile.remove_roles)
    verifications = _offloaded(Keystile.verifications)
    top_keys = _offloaded(Keystile.top_keys)
    top_identities = _offloaded(Keystile.top_identities)
    create_identity = _offloaded(Keystile.create_identity)
    get_identity = _offloaded(Keystile.get_identity)
    list_identities = _offloaded(Keystile.list_identities)
    update_identity = _offloaded(Keystile.update_identity)
    delete_identity = _offloaded(Keystile.delete_identity)
    create_permission = _offloaded(Keystile.create_permission)
    get_permission = _offloaded(Keystile.get_permission)
    list_permissions = _offloaded(Keystile.list_permissions)
    delete_permission = _offloaded(Keystile.delete_permission)
    create_role = _offloaded(Keystile.create_role)
    get_role = _offloaded(Keystile.get_role)
    list_roles = _offloaded(Keystile.list_roles)
    update_role = _offloaded(Keystile.update_role)
    delete_role = _offloaded(Keystile.delete_role)
