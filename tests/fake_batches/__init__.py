"""The providers' batch APIs for the fake provider, in memory: OpenAI's Files + Batches and
Anthropic's Message Batches.

No background thread: a batch moves along its timeline when it is read (retrieve, list, cancel,
results, `FakeProvider.batch_records`); it ends `BatchBehaviour.delay_s` after it was created.
Each item's answer is what the realtime route answers for the same body. Every store method
returns (HTTP status, JSON body) — or bytes for file content and results.
"""

from tests.fake_batches.anthropic_batches import AnthropicBatches
from tests.fake_batches.common import (
    BatchBehaviour,
    BatchLimits,
    BatchRecord,
    anthropic_error,
    openai_error,
    parse_multipart,
    successes,
)
from tests.fake_batches.openai_batches import OpenAIBatches

__all__ = ["AnthropicBatches", "BatchBehaviour", "BatchLimits", "BatchRecord", "OpenAIBatches", "anthropic_error",
           "openai_error", "parse_multipart", "successes"]
