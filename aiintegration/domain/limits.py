"""Every limit a caller's input is held to, written once: the domain's validation and the
API's schemas (hence the OpenAPI document) both read them from here."""

from __future__ import annotations

TASK_TYPES = ("text_generation", "image_generation", "chat_completion")
CHAT_ROLES = ("system", "user", "assistant")

MAX_CONTENT_BYTES = 256 * 1024  # request_content, serialized (413 beyond)
MAX_METADATA_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024  # a whole HTTP request body
MAX_NAME = 200  # requested_by, idempotency keys, chat user/item ids
MAX_TOKENS = 200_000
MAX_TIMEOUT_S = 3600.0  # options.timeout_s
MIN_TIMEOUT_S = 1.0
MAX_RETRIES = 10  # options.max_retries
MAX_REASON = 1000  # cancellation/retry/close/switch reasons
# A manual retry's delay stays below the broker's visibility timeout, so the delayed message
# is not redelivered early (FACTS: kombu issue 337).
MAX_RETRY_DELAY_S = 3000.0
MAX_NOTE = 2000  # a DLQ review note
MAX_URL = 2048
MAX_PAGE = 200  # items per list page
DEFAULT_PAGE = 50

MAX_CHAT_MESSAGE_CHARS = 32 * 1024
MAX_CHAT_CONTEXT_BYTES = 64 * 1024

MIN_API_KEY, MAX_API_KEY = 8, 500
MAX_PROVIDER_TIMEOUT_S = 3600.0
