"""Typed settings: YAML file first, then `CALLGATE_<SECTION>__<KEY>` environment overrides.

Every section refuses unknown keys, so a typo in a YAML file fails at start-up instead of being
silently ignored. Auth codes are secrets: they never appear in a repr or a log line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = Field("0.0.0.0", description="Interface to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one structured line per turn; text: for humans."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Level of the server's own log."
    )
    log_content: bool = Field(
        False, description="Log message text and biz_params values (off: privacy by default)."
    )
    sse_ping_s: float = Field(
        0.0, ge=0, description="SSE keep-alive comment interval; 0 = off (gateway parser unknown)."
    )
    sse: Literal["sse-starlette", "starlette"] = Field(
        "starlette",
        description="Response class for streams (same bytes either way). starlette: Starlette's "
        "StreamingResponse, measured leaner per token (benchmarks/results/sse_ab.md); "
        "sse-starlette: needed for keep-alive pings (sse_ping_s).",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted (413 beyond, while reading)."
    )
    max_header_bytes: int = Field(
        16_384, ge=1024, description="Largest request head accepted by the HTTP parser."
    )
    head_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Deadline for receiving a request's whole head (request line and headers), "
        "from its first byte or from the connection's opening: a slow sender (slowloris) is "
        "closed then.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Deadline for receiving a request's whole body after its head."
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Open connections one front-end process holds; one more closes the "
        "connection idle longest (kept alive between requests), or with none idle is answered "
        "503 and closed at once.",
    )
    keep_alive_s: int = Field(
        30,
        ge=1,
        description="How long a connection may stay idle between requests before it is closed "
        "(HTTP keep-alive); the gateway reconnects.",
    )
    max_pipelined: int = Field(
        16,
        ge=1,
        description="Requests one connection may send ahead of their answers (HTTP/1.1 "
        "pipelining): nothing more is read while any wait, and a read bringing more aborts "
        "the connection.",
    )
    write_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection whose peer stops reading (its answer backs up above the "
        "write buffer's high-water mark), or that is closing and not done sending, is aborted "
        "after this long.",
    )
    admin_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /metrics on this port (same host) instead of the main port, for a "
        "scraper on an internal network; the main port then answers 404 on /metrics. "
        "/health and /ready are on both.",
    )
    docs: bool = Field(False, description="Serve the OpenAPI schema (/openapi.json, /redoc).")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Front-end processes (HTTP, tokenizer, detokenizer) sharing one engine "
        "core, as `vllm serve --api-server-count`. One Python process tops out near 8k tokens/s; "
        "more lets a large GPU stream what it generates. Admission limit and /metrics stay "
        "server-wide.",
    )

    @model_validator(mode="after")
    def _ping_needs_sse_starlette(self) -> ServerSettings:
        if self.sse_ping_s > 0 and self.sse != "sse-starlette":
            raise ValueError("server.sse_ping_s needs server.sse: sse-starlette")
        return self

    @model_validator(mode="after")
    def _admin_port_is_another_port(self) -> ServerSettings:
        if self.admin_port == self.port:
            raise ValueError("server.admin_port must differ from server.port")
        return self


class AuthSettings(_Section):
    codes: list[SecretStr] = Field(
        default_factory=list,
        description="Accepted Authorization codes (raw or `Bearer <code>`). "
        "CALLGATE_AUTH_CODES=a,b overrides. Empty: one is generated and printed at start-up.",
    )
    protect_metrics: bool = Field(False, description="Require an auth code on GET /metrics.")

    @field_validator("codes", mode="before")
    @classmethod
    def _split_csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [c.strip() for c in v.split(",") if c.strip()]
        return v


class EngineSettings(_Section):
    model: str = Field("Qwen/Qwen2.5-0.5B-Instruct", description="Checkpoint dir or hub id.")
    served_name: str | None = Field(None, description="Name in logs; defaults to `model`.")
    max_model_len: int | None = Field(4096, ge=16, description="Context length (tokens).")
    dtype: str = Field("auto", description="Weights/activation dtype (auto, bfloat16, float16).")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of accelerator memory for weights + KV cache."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Max sequences batched at once.")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="Token budget of one scheduler step."
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV of shared prompt prefixes.")
    enable_chunked_prefill: bool | None = Field(
        None,
        description="Prefill long prompts in chunks, mixed with other turns' decoding (None: "
        "vLLM's default, on). Off in the CPU configs: on vLLM's CPU build a seeded turn whose "
        "prompt is chunked kills the engine core, so with chunking on a seeded sampled turn is "
        "refused (400); with it off seeds are served. Off needs max_num_batched_tokens >= "
        "max_model_len (vLLM raises the default to it).",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one replica spans.")
    data_parallel_size: int = Field(
        1,
        ge=1,
        le=64,
        description="Engine cores behind this address, each on its own tensor_parallel_size "
        "GPUs (vLLM's data parallelism, as `vllm serve --data-parallel-size`): a model that "
        "fits one GPU serves from all of them. Admission (max_num_seqs x N by default), "
        "metrics and health are server-wide; one core dying stops the server.",
    )
    call_affinity: bool = Field(
        True,
        description="With data_parallel_size > 1: a call's later turns go to the engine core "
        "that served it (its dialog is in that core's prefix cache), unless that core is much "
        "busier than the least busy one (affinity_slack). Off: vLLM's own balancer places "
        "every turn by load alone.",
    )
    affinity_slack: int | None = Field(
        None,
        ge=0,
        description="How many more turns in flight a call's engine core may have than the least "
        "busy core before the call moves there (a core that is full, max_num_seqs turns, while "
        "another has room, moves it too). None: half of max_num_seqs, at least 2 "
        "(benchmarks/README.md, data parallel, has the figures).",
    )
    quantization: str | None = Field(None, description="vLLM quantization method (awq, fp8...).")
    enforce_eager: bool = Field(False, description="No CUDA graphs / torch.compile.")
    scheduling_policy: Literal["priority", "fcfs"] = Field(
        "priority",
        description="vLLM's queue order. priority: turns of calls in progress go ahead of the "
        "first turns of new calls (then arrival order); fcfs: arrival order only.",
    )
    trust_remote_code: bool = Field(False, description="Allow checkpoint-provided code.")
    seed: int = Field(0, description="Engine seed.")
    stream_interval: int = Field(
        1,
        ge=1,
        le=16,
        description="After a turn's first token (always sent at once), hand the reply to the "
        "front end every N tokens: fewer, fuller chunks and less per-token work in the front "
        "end. A TTS voice waits for whole phrases anyway (vLLM's stream_interval).",
    )
    offline_fallback: bool = Field(
        False,
        description="When `model` is a hub id neither cached nor reachable (and no --model "
        "was given), serve the embedded SmolLM2-135M-Instruct instead, saying so in one line. "
        "For a first run on a CPU (configs/cpu.yaml); a GPU deployment fails instead.",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vLLM AsyncEngineArgs passed through unchanged (load_format, ...). "
        "With adapters (models.aliases.*.lora), enable_lora and max_lora_rank are derived "
        "from them and refused here; max_loras (default: one per adapter) may be set.",
    )


class AliasSettings(_Section):
    system_prompt: str = Field(
        "",
        description="Sandboxed Jinja2 template; `biz` holds the request's biz_params. "
        "Put static text first and per-call values last so the prefix cache covers it.",
    )
    fallback_text: str = Field(
        "Sorry, could you say that again?",
        min_length=1,
        description="Spoken when the engine misses the first-token deadline or fails mid-turn.",
    )
    speech_filter: bool = Field(
        False,
        description="Keep out of the reply what a voice cannot say: markdown, list markers, "
        "code, URLs, emoji (server/text/speech.py). On in the shipped configs.",
    )
    url_phrase: str = Field(
        "the link",
        max_length=200,
        description="Said in place of a URL when speech_filter is on (e.g. 链接 for Chinese).",
    )
    end_call: bool = Field(
        False,
        description="The model may end the call: its system prompt says how (after its goodbye "
        "it writes [END_CALL], never spoken: server/text/end_call.py), and once the reply has "
        "been sent, callgate asks Alibaba's engine to hang up after the playback "
        "(HangupOperate, the `hangup` section).",
    )
    closing_text: str = Field(
        "Thank you for calling. Goodbye!",
        min_length=1,
        max_length=500,
        description="With end_call: spoken when the model ends the call without saying anything.",
    )
    lora: str | None = Field(
        None,
        min_length=1,
        description="Serve this alias through a LoRA adapter on the base checkpoint: a local "
        "directory with an adapter_config.json, or a hub id (from the cache, else downloaded "
        "once at start-up). None: the base model. A missing adapter refuses start-up.",
    )
    lora_revision: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{40}$",
        description="For a hub id in `lora`: the commit (40 hex digits) to serve, so that what "
        "is served cannot change behind you. None: the main branch at start-up (the log names "
        "its commit, to pin). Only the adapter's config and weights are downloaded.",
    )
    filler_texts: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=64,
        description="Short phrases (e.g. 嗯，, 好的，, 'Let me check. ') of which one, at random, "
        "is streamed as content when nothing of the answer has been sent filler_after_s after "
        "the request arrived; the answer follows in the same stream. Never once the answer has "
        "started, never two, not for stream: false. End each as the answer should follow it "
        "(a space, a comma).",
    )
    enable_thinking: bool | None = Field(
        None,
        description="Qwen3 thinking for this alias (sampling.enable_thinking says what it is): "
        "e.g. a quick alias and one that reasons, on one checkpoint. None: "
        "sampling.enable_thinking.",
    )
    filler_after_s: float | None = Field(
        None,
        ge=0,
        description="When to say a filler (seconds after arrival; below deadlines."
        "first_token_s, whose fallback still comes after it). None: no filler.",
    )

    @model_validator(mode="after")
    def _filler_has_texts(self) -> AliasSettings:
        if self.filler_after_s is not None and not self.filler_texts:
            raise ValueError("filler_after_s needs filler_texts")
        return self


class ModelsSettings(_Section):
    default: str = Field("qwen-plus", description="Alias used for names not in `aliases`.")
    aliases: dict[str, AliasSettings] = Field(
        default_factory=lambda: {"qwen-plus": AliasSettings()},
        description="Request `model` names served by the checkpoint, with per-alias prompts "
        "and optional LoRA adapters.",
    )

    @model_validator(mode="after")
    def _default_is_alias(self) -> ModelsSettings:
        if self.default not in self.aliases:
            raise ValueError(f"models.default {self.default!r} is not in models.aliases")
        return self

    warm_prompts: bool = Field(
        True,
        description="At start-up, before /ready says ready, run each alias's fixed system "
        "prompt (up to its first per-call value) once through the engine, so the first turns "
        "of the first calls find it in the prefix cache (needs engine.enable_prefix_caching).",
    )

    def alias_for(self, model: str) -> str:
        """The alias a request's `model` is served as: itself when configured, else the default.
        The one place this is decided: turns, refusals and the metrics' `model` label agree."""
        return model if model in self.aliases else self.default


class SamplingSettings(_Section):
    max_tokens: int = Field(256, ge=1, description="Cap on a turn's output tokens (speech).")
    enable_thinking: bool = Field(
        False,
        description="Qwen3 thinking. Off: the template's empty think block, <think> banned. "
        "On: the model reasons, but only the answer after </think> is spoken. Each alias "
        "may say otherwise (models.aliases.*.enable_thinking).",
    )


class LimitsSettings(_Section):
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Admission limit; beyond it a turn gets 503 + Retry-After at once. "
        "Default: the engine's max_num_seqs, so that every admitted turn decodes at once "
        "(a turn queued for a batch slot waits a whole turn for its first token).",
    )
    new_call_max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Calls first: at this many turns in flight, the first turns of new calls get "
        "503 + Retry-After, while turns of calls in progress are admitted up to max_in_flight. "
        "Default: half of max_in_flight (benchmarks/README.md, calls first, says why); "
        "equal to max_in_flight (or more) turns the distinction off.",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After value on a 503.")


class DeadlinesSettings(_Section):
    first_token_s: float = Field(
        5.0, gt=0, description="No token by then: abort and speak the fallback sentence."
    )
    turn_s: float = Field(120.0, gt=0, description="Whole-turn deadline (stalled readers).")


class ShutdownSettings(_Section):
    drain_s: float = Field(20.0, ge=0, description="How long in-flight turns may finish on stop.")


class ReadinessSettings(_Section):
    stall_s: float = Field(
        15.0, gt=0, description="/ready turns 503 when requests run but no token came for this."
    )
    hung_exit_after: int = Field(
        4,
        ge=0,
        description="Still no token after this many stall_s: the engine is hung; end the open "
        "turns with the fallback and exit 6 so that the supervisor restarts the server. "
        "0: never.",
    )


class HangupSettings(_Section):
    region: str | None = Field(
        None,
        description="Region of Alibaba Cloud's communication engine API (AICCS, HangupOperate), "
        "e.g. cn-shanghai. With neither region nor endpoint, calls the models end are not hung "
        "up (counted not_configured). The key comes from the SDK's credential chain "
        "(ALIBABA_CLOUD_ACCESS_KEY_ID and _SECRET, the profile file, an ECS or RRSA RAM role), "
        "never from here.",
    )
    endpoint: str | None = Field(
        None,
        description="The API's host, instead of the SDK's for the region (aiccs.aliyuncs.com); "
        "http://host:port for a local stand-in (tests).",
    )
    timeout_s: float = Field(3.0, gt=0, le=30, description="Limit of one HangupOperate attempt.")
    attempts: int = Field(
        3,
        ge=1,
        le=5,
        description="Attempts at most; network errors, timeouts, throttling and 5xx are "
        "retried, an error answer (4xx) is not.",
    )
    backoff_s: float = Field(
        0.5, ge=0, le=10, description="Wait before the second attempt; doubled before each next."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CALLGATE_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    deadlines: DeadlinesSettings = Field(default_factory=DeadlinesSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    readiness: ReadinessSettings = Field(default_factory=ReadinessSettings)
    hangup: HangupSettings = Field(default_factory=HangupSettings)

    @model_validator(mode="after")
    def _fillers_before_the_deadline(self) -> Settings:
        deadline = self.deadlines.first_token_s
        for alias, spoken in self.models.aliases.items():
            if spoken.filler_after_s is not None and spoken.filler_after_s >= deadline:
                raise ValueError(
                    f"models.aliases.{alias}.filler_after_s must be below "
                    f"deadlines.first_token_s ({deadline}): the fallback would come first"
                )
        return self

    def thinking(self, alias: str) -> bool:
        """Whether `alias` thinks: its own `enable_thinking`, else `sampling.enable_thinking`.
        The one place this is decided: the prompt, the banned tokens and the reply's filter."""
        own = self.models.aliases[alias].enable_thinking
        return self.sampling.enable_thinking if own is None else own

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file (passed as init values).
        return (env_settings, init_settings)


def load_settings(path: str | Path | None) -> Settings:
    """Read a YAML file (optional) and apply environment overrides.

    `CALLGATE_AUTH_CODES` (comma-separated) is the documented way to pass codes; it beats
    `auth.codes` in the file, as every environment value does.
    """
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping")
        data = loaded or {}
    codes = os.environ.get("CALLGATE_AUTH_CODES")
    if codes is not None:
        data["auth"] = {**(data.get("auth") or {}), "codes": codes}
    return Settings(**data)


def settings_problem(error: Exception) -> str:
    """One line for settings that do not load (`load_settings`'s errors): each invalid field's
    place and pydantic's reason, never the value given (it may be an auth code)."""
    if isinstance(error, ValidationError):
        return "invalid settings: " + "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors(include_url=False, include_input=False)
        )
    if isinstance(error, OSError):
        return f"cannot read the settings file: {error.strerror or error} ({error.filename})"
    return "the settings file is not valid YAML settings: " + " ".join(str(error).split())
