"""The request: raw body bytes in, a validated `ChatRequest` out, or `InvalidRequest`.

The gateway's tables say sampling values are strings and its examples send numbers, so every
number field takes both (`"0.1"` and `0.1`) and refuses anything that is not a finite number.
OpenAI chat-completions fields that make sense for a phone turn are honoured so that the OpenAI
SDK and vLLM's benchmark client work unchanged; fields we cannot honour are refused by name
rather than silently ignored. Other unknown fields are ignored, as OpenAI-style servers do.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from server.base.errors import InvalidRequest, UnsupportedFeature

MAX_MESSAGES = 4096
# Text parts in all messages together: each costs about what a message costs to validate, and a
# 1 MiB body holds 65,000 empty ones (0.15-0.4 s of CPU). A caller needs a few a message at most.
MAX_CONTENT_PARTS = 4096
MAX_ID_CHARS = 256
MAX_BIZ_PARAMS_BYTES = 16_384
MAX_BIZ_VALUE_CHARS = 1024  # one biz_params string: a name, a city, an order summary
MAX_BIZ_DEPTH = 8  # nesting of biz_params: templates read `biz.a.b`, not deep trees
MAX_STOP = 16
# vLLM holds back the last (longest stop string - 1) characters of the reply until it cannot be
# the start of a stop string, and scans for every stop string at each step: a stop string is a
# marker ("\nUser:", "<|im_end|>") or a phrase, and 256 characters leave room for any of those.
MAX_STOP_CHARS = 256
# Control characters (newlines included) in a biz_params string become one space: values are
# data inside the operator's system prompt and may not start lines or sections of their own.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _number(v: Any) -> Any:
    """Accept JSON numbers and numeric strings; refuse NaN, infinities and non-numbers."""
    if isinstance(v, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise ValueError("must be a number or a numeric string") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


def _integer(v: Any) -> Any:
    v = _number(v)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("must be an integer")
        v = int(v)
    return v


def _text(v: Any) -> Any:
    """Strings must be encodable: a lone surrogate cannot reach the tokenizer."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("contains an unpaired surrogate") from None
    return v


Num = Annotated[float, BeforeValidator(_number)]
Int = Annotated[int, BeforeValidator(_integer)]
Text = Annotated[str, BeforeValidator(_text)]
Id = Annotated[str, BeforeValidator(_text), Field(max_length=MAX_ID_CHARS)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: Text = ""

    @field_validator("type")
    @classmethod
    def _only_text(cls, v: str) -> str:
        if v != "text":
            raise ValueError(f"content parts of type {v!r} are not supported (text only)")
        return v


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    # A missing content is an empty turn, like `null` (defaults are not validated, so the
    # default must already be the flattened form).
    content: Text | list[TextPart] | None = ""

    @field_validator("content")
    @classmethod
    def _flatten(cls, v: str | list[TextPart] | None) -> str:
        if v is None:
            return ""
        if isinstance(v, list):
            return "".join(p.text for p in v)
        return v

    @property
    def text(self) -> str:
        assert isinstance(self.content, str)
        return self.content


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """What one caller turn asks for, after validation. Field names follow the wire."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: Id = ""
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None

    temperature: Num | None = Field(None, ge=0, le=2)
    top_p: Num | None = Field(None, gt=0, le=1)
    top_k: Int | None = Field(None, ge=-1, le=1_000_000)
    min_p: Num | None = Field(None, ge=0, le=1)
    presence_penalty: Num | None = Field(None, ge=-2, le=2)
    frequency_penalty: Num | None = Field(None, ge=-2, le=2)
    repetition_penalty: Num | None = Field(None, gt=0, le=2)
    max_tokens: Int | None = Field(None, ge=1)
    max_completion_tokens: Int | None = Field(None, ge=1)
    min_tokens: Int | None = Field(None, ge=0)
    ignore_eos: bool = False
    seed: Int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: Text | list[Text] | None = None

    session_id: Id | None = None
    out_id: Id | None = None
    biz_params: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _camel_case(cls, data: Any) -> Any:
        """The Chinese protocol page writes `topP`/`topK`; the snake-case spelling wins."""
        if isinstance(data, dict):
            for camel, snake in (("topP", "top_p"), ("topK", "top_k")):
                if camel in data and data.get(snake) is None:
                    data = {**data, snake: data[camel]}
        return data

    @field_validator("messages", mode="before")
    @classmethod
    def _count_parts(cls, v: Any) -> Any:
        """Count content parts before any is validated, so too many cost a count, not a parse."""
        if isinstance(v, list) and len(v) <= MAX_MESSAGES:
            parts = sum(
                len(c) for m in v if isinstance(m, dict) and isinstance(c := m.get("content"), list)
            )
            if parts > MAX_CONTENT_PARTS:
                raise ValueError(f"at most {MAX_CONTENT_PARTS} content parts in all messages")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"at most {MAX_STOP} non-empty stop strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string is longer than {MAX_STOP_CHARS} characters")
        return stops

    @field_validator("biz_params")
    @classmethod
    def _biz_size(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        try:
            size = len(json.dumps(v, ensure_ascii=False).encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("contains an unpaired surrogate") from None
        if size > MAX_BIZ_PARAMS_BYTES:
            raise ValueError(f"larger than {MAX_BIZ_PARAMS_BYTES} bytes")
        cleaned = _biz_value(v, 1)
        assert isinstance(cleaned, dict)
        return cleaned

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def _biz_value(v: Any, depth: int) -> Any:
    """biz_params, bounded and cleaned: nesting depth, string length, control characters."""
    if depth > MAX_BIZ_DEPTH:
        raise ValueError(f"nested deeper than {MAX_BIZ_DEPTH} levels")
    if isinstance(v, str):
        if len(v) > MAX_BIZ_VALUE_CHARS:
            raise ValueError(f"has a string longer than {MAX_BIZ_VALUE_CHARS} characters")
        return _CONTROL.sub(" ", v)
    if isinstance(v, dict):
        return {_biz_value(k, depth): _biz_value(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list):
        return [_biz_value(x, depth + 1) for x in v]
    return v


# Fields we cannot honour: refused by name with a 400 rather than silently ignored.
def _unsupported(data: dict[str, Any]) -> str | None:
    n = data.get("n")
    if n is not None and n != 1 and n != "1":
        return "n: only one choice per turn is supported"
    if data.get("logprobs") not in (None, False):
        return "logprobs: not supported"
    if data.get("top_logprobs") is not None:
        return "top_logprobs: not supported"
    for key in ("tools", "functions", "tool_choice", "function_call", "audio", "modalities"):
        if data.get(key) not in (None, [], "none"):
            return f"{key}: not supported"
    fmt = data.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        return "response_format: only text is supported"
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(body: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity literals, bounded nesting."""
    if not body.strip():
        raise InvalidRequest("request body is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    except json.JSONDecodeError as e:
        # The position only: the decoder's own text is no business of the caller's.
        where = f"line {e.lineno}, column {e.colno}"
        raise InvalidRequest(f"request body is not valid JSON ({where})") from None
    except ValueError:  # NaN literals, integers past sys.get_int_max_str_digits()
        raise InvalidRequest(
            "request body is not valid JSON (NaN, Infinity, or an integer over "
            f"{sys.get_int_max_str_digits()} digits)"
        ) from None


def _describe(err: ValidationError) -> str:
    first = err.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def parse_request(body: bytes) -> ChatRequest:
    """Validate one request body; every failure is an `InvalidRequest` with a clear message."""
    data = decode_json(body)
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    reason = _unsupported(data)
    if reason is not None:
        raise UnsupportedFeature(reason)
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        raise InvalidRequest(_describe(e)) from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
