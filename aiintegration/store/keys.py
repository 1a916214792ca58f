"""Every Redis key this service writes, named once (the Lua scripts in `scripts.py` build
the same names from the prefix). Nothing outside `store/` knows a key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "aii"

    # task records and their indexes (sorted sets)
    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def task_stream(self, task_id: str) -> str:
        return f"{self.prefix}:events:task:{task_id}"

    @property
    def global_stream(self) -> str:
        return f"{self.prefix}:events"

    def index(self, name: str) -> str:
        """`tasks`, `status:<s>`, `by:<requested_by>`, `due` (running attempts at the earlier
        of lease end and deadline), `retry`, `deferred` (throttled tasks sleeping in Redis),
        `upkeep` (kept records: when the cleanup sweep visits them next), `dlq`; `expiry` and
        `compact` were where earlier versions listed kept records (drained by the sweep)."""
        return f"{self.prefix}:idx:{name}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    # the dead-letter queue
    @property
    def dlq(self) -> str:
        return f"{self.prefix}:dlq"

    # chat sessions
    def chat(self, session_id: str) -> str:
        return f"{self.prefix}:chat:{session_id}"

    def chat_messages(self, session_id: str) -> str:
        return f"{self.prefix}:chat:{session_id}:messages"

    def chat_stream(self, session_id: str) -> str:
        return f"{self.prefix}:events:chat:{session_id}"

    # providers
    @property
    def provider_configs(self) -> str:
        return f"{self.prefix}:providers:config"

    @property
    def provider_order(self) -> str:
        return f"{self.prefix}:providers:order"

    @property
    def provider_version(self) -> str:
        return f"{self.prefix}:providers:version"

    def provider_history(self, name: str) -> str:
        return f"{self.prefix}:providers:history:{name}"

    def breaker(self, name: str) -> str:
        """pybreaker's storage namespace for one provider's breaker."""
        return f"{self.prefix}:breaker:{name}"

    def provider_outcomes(self, name: str, minute: int) -> str:
        return f"{self.prefix}:pstats:{name}:{minute}"

    def open_feeds(self, tenant: str) -> str:
        """The event feeds a tenant has open (sorted set: feed id → lease end)."""
        return f"{self.prefix}:feeds:{tenant}"

    # provider quotas: one bucket per provider, or per model with limits of its own ("*" = shared)
    def quota(self, provider: str, bucket: str) -> str:
        return f"{self.prefix}:quota:{{{provider}}}:{bucket}"

    def quota_log(self, provider: str, bucket: str) -> str:
        return f"{self.prefix}:quota:{{{provider}}}:{bucket}:log"

    def quota_amounts(self, provider: str, bucket: str) -> str:
        return f"{self.prefix}:quota:{{{provider}}}:{bucket}:amounts"

    def quota_waiting(self, provider: str, bucket: str) -> str:
        return f"{self.prefix}:quota:{{{provider}}}:{bucket}:waiting"

    def quota_needs(self, provider: str, bucket: str) -> str:
        return f"{self.prefix}:quota:{{{provider}}}:{bucket}:needs"

    def quota_clocks(self, provider: str, bucket: str) -> str:
        """Per tenant, the virtual time of its last place in the wait line (fair share)."""
        return f"{self.prefix}:quota:{{{provider}}}:{bucket}:clocks"
    # usage ledger and budget reservations (store/usage.py; TRANSITION writes the ledger)
    def usage(self, window: str, key: str) -> str:
        """A window's ledger hash: `window` "day" (key 2026-11-30) or "month" (key 2026-11)."""
        return f"{self.prefix}:usage:{key}" if window == "day" else f"{self.prefix}:usage:month:{key}"

    def budget_reserved(self, tenant: str, window: str, key: str) -> str:
        return f"{self.prefix}:budget:{tenant}:{window}:{key}"

    # the batch lane (store/batches.py)
    def lane_waiting(self, group: str) -> str:
        """Lane tasks waiting for a batch of one provider|model (sorted set: id → when admitted)."""
        return f"{self.prefix}:lane:waiting:{group}"

    @property
    def lane_groups(self) -> str:
        """The provider|model groups that may have waiting tasks (set)."""
        return f"{self.prefix}:lane:groups"

    def lane_batch(self, batch_id: str) -> str:
        """One lane batch (hash, `LaneBatch`)."""
        return f"{self.prefix}:lane:batch:{batch_id}"

    @property
    def lane_batches(self) -> str:
        """Every lane batch kept, by creation time (sorted set): the operators' listing."""
        return f"{self.prefix}:lane:batches"

    @property
    def lane_live(self) -> str:
        """Lane batches not ended yet (sorted set by creation time): what collect and poll work on."""
        return f"{self.prefix}:lane:live"

    @property
    def lane_provider_ids(self) -> str:
        """The provider batch ids we recorded (sorted set by creation time): reconciling tells
        ours apart from batches someone else made on the same account."""
        return f"{self.prefix}:lane:provider_ids"

    # operations
    @property
    def metrics(self) -> str:
        return f"{self.prefix}:metrics"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def sweep_stats(self) -> str:
        return f"{self.prefix}:stats"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"
