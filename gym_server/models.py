"""Wire and on-disk formats of the gym: arenas, episodes, call logs, rewards.

Everything that crosses a process, a socket or a file boundary is one of these models. Servers, clients,
synthesis and training import them from here and never define their own copies.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ARENA_FORMAT_VERSION = 1

JSONValue = Any
"""A JSON-serializable value (what tools take and return)."""

ArenaKind = Literal["arena", "emulator", "upstream", "suite"]
"""What serves an arena's tools: its own code (`arena`), a tool doc's emulator, a fronted MCP server, or an
external benchmark suite's backend and scorer (`suite`, named by `Arena.suite`)."""


class ScenarioType(str, Enum):
    """ASTRA's four shapes of sub-question dependency graph."""

    single_hop = "single_hop"
    parallel_single_hop = "parallel_single_hop"
    multi_hop = "multi_hop"
    parallel_multi_hop = "parallel_multi_hop"


class ToolAnnotations(BaseModel):
    """MCP tool annotations: hints about what a call does. Clients use them to decide what is safe to repeat
    (the toolbox retries a read-only or idempotent call after a transport error, never a writing one)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    title: str | None = None
    read_only_hint: bool | None = Field(default=None, alias="readOnlyHint")
    """The tool changes nothing."""
    destructive_hint: bool | None = Field(default=None, alias="destructiveHint")
    """A writing tool may delete or overwrite (rather than only add)."""
    idempotent_hint: bool | None = Field(default=None, alias="idempotentHint")
    """Calling it twice with the same arguments has no further effect."""
    open_world_hint: bool | None = Field(default=None, alias="openWorldHint")
    """It reaches beyond the episode's own world (a fronted real server); arenas and emulators are closed."""

    @classmethod
    def reading(cls, title: str | None = None) -> ToolAnnotations:
        return cls(title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

    @classmethod
    def writing(cls, title: str | None = None, destructive: bool = False) -> ToolAnnotations:
        return cls(title=title, read_only_hint=False, destructive_hint=destructive, idempotent_hint=False, open_world_hint=False)


class ToolSpec(BaseModel):
    """An MCP tool definition as the arena ships it (names follow MCP's wire casing)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
    description: str = ""
    input_schema: dict[str, Any] = Field(alias="inputSchema")
    output_schema: dict[str, Any] | None = Field(default=None, alias="outputSchema")
    annotations: ToolAnnotations | None = None

    @classmethod
    def from_mcp(cls, tool: dict[str, Any]) -> ToolSpec:
        """A tool as another MCP server lists it: the fields the gym serves, annotation keys it knows."""
        data = {k: tool[k] for k in ("name", "description", "inputSchema", "outputSchema") if tool.get(k) is not None}
        hints = tool.get("annotations")
        if isinstance(hints, dict):
            data["annotations"] = {k: v for k, v in hints.items() if k in _ANNOTATION_KEYS}
        return cls.model_validate(data)

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":
            raise ValueError("inputSchema must be a JSON Schema with type 'object'")
        return schema


_ANNOTATION_KEYS = {f.alias or n for n, f in ToolAnnotations.model_fields.items()}


class ServerDoc(BaseModel):
    """A tool server's documentation, normalized: what the emulators serve and synthesis reads."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    title: str | None = None
    description: str = ""
    domain: str | None = None
    tools: list[ToolSpec]


class GoldCall(BaseModel):
    """The call that solves a sub-task: what the oracle plays and what validation executes."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    arguments: dict[str, JSONValue] = Field(default_factory=dict)


class SubTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    answer: JSONValue
    depends_on: list[str] = Field(default_factory=list)
    gold_call: GoldCall | None = None
    """None for a sub-task answered by reasoning alone (no tool); it then does not count toward n."""


class InitialState(BaseModel):
    """The world an episode starts from: SQLite DDL, then rows per table."""

    model_config = ConfigDict(extra="forbid")

    ddl: list[str] = Field(default_factory=list)
    rows: dict[str, list[dict[str, JSONValue]]] = Field(default_factory=dict)


class UserTurn(BaseModel):
    """One user turn of a multi-turn episode: what the user says, and the tools that appear with it."""

    model_config = ConfigDict(extra="forbid")

    message: str
    add_tools: list[str] = Field(default_factory=list)
    """Tools hidden until this turn (BFCL's miss_func): the tool list grows when the episode reaches it."""


class Provenance(BaseModel):
    model_config = ConfigDict(extra="allow")

    source: str = "hand-written"
    generator: str | None = None
    seed: int | None = None
    notes: str | None = None


class Arena(BaseModel):
    """One verifiable environment: a main question, its sub-task DAG, the tools and their code and data."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = ARENA_FORMAT_VERSION
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    domain: str
    language: str = "en"
    scenario_type: ScenarioType
    question: str = ""
    final_answer: JSONValue = None
    subtasks: list[SubTask] = Field(default_factory=list)
    tools: list[ToolSpec]
    implementation: str
    """Python source defining one function per tool: `def tool_name(db, **arguments)`; `db` is the episode's
    SQLite connection (rows as dicts)."""
    initial_state: InitialState = Field(default_factory=InitialState)
    provenance: Provenance = Field(default_factory=Provenance)
    kind: ArenaKind = "arena"
    """An emulator serves a tool doc's tools, an upstream a real MCP server's; neither has questions to score."""
    failure_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    """This arena's default injected-failure rate (emulators: 0.2); an episode's own rate wins."""
    turns: list[UserTurn] = Field(default_factory=list)
    """Scripted user turns, the first being `question`; empty for a single-turn arena."""
    suite: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_\-]{0,31}$")
    """The suite whose backend serves and scores this arena (kind `suite`), e.g. `bfcl-mt`."""
    suite_data: dict[str, JSONValue] | None = None
    """What the suite's backend and scorer need (BFCL: the entry and its ground truth); the operator's view only."""
    validate_arguments: bool = True
    """Check arguments against inputSchema before the backend runs; a suite whose own harness does not (BFCL)
    turns it off so that its backend answers such calls as the harness would."""
    hidden_tools_callable: bool = False
    """Whether a tool held back until a later turn already answers when called by name (it stays unlisted).
    BFCL's harness runs any method of an entry's classes that the model names, held out or not (its own ground
    truth does so once, in miss_func_49); a suite that reproduces that harness sets this."""

    @property
    def n_turns(self) -> int:
        return max(1, len(self.turns))

    @property
    def hidden_tools(self) -> dict[str, int]:
        """Tool name -> the turn at which it appears, for tools not offered from the start."""
        return {name: i for i, turn in enumerate(self.turns) for name in turn.add_tools}

    @model_validator(mode="after")
    def _structure(self) -> Arena:
        from gym_server.arena_checks import structural_problems

        problems = structural_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def gold_plan(self) -> list[SubTask]:
        """The sub-tasks with a gold call, each after everything it depends on (ties keep file order): the one
        order the oracle plays, validation executes and scoring matches calls in."""
        from gym_server.arena_checks import topological_order

        scored = {s.id: s for s in self.scored_subtasks}
        return [scored[i] for i in topological_order({s.id: s.depends_on for s in self.subtasks}) if i in scored]

    @property
    def tool_by_name(self) -> dict[str, ToolSpec]:
        return {t.name: t for t in self.tools}

    @property
    def scored_subtasks(self) -> list[SubTask]:
        return [s for s in self.subtasks if s.gold_call is not None]


class ArenaSummary(BaseModel):
    """The row `GET /api/arenas` returns."""

    id: str
    domain: str
    scenario_type: str
    n_subtasks: int
    n_tools: int
    language: str = "en"


class FailureKind(str, Enum):
    timeout = "timeout"
    unavailable = "unavailable"
    error_result = "error_result"


class FailurePolicy(BaseModel):
    """Which calls fail on purpose. The same seed yields the same failures at the same call indices."""

    model_config = ConfigDict(extra="forbid")

    rate: float = Field(default=0.0, ge=0.0, le=1.0)
    kinds: list[FailureKind] = Field(default_factory=lambda: list(FailureKind), min_length=1)
    timeout_delay_s: float = Field(default=0.0, ge=0.0, le=60.0)
    """How long an injected timeout stalls before answering (0 answers at once)."""


class DistractorRef(BaseModel):
    """A tool of another arena served in this episode as an irrelevant (but real, callable) tool."""

    model_config = ConfigDict(extra="forbid")

    arena_id: str
    tool: str


class EpisodeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arena_id: str
    seed: int | None = None
    failure_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    failure_kinds: list[FailureKind] | None = None
    distractors: list[DistractorRef] = Field(default_factory=list)


class EpisodeCreated(BaseModel):
    episode_id: str
    mcp_url: str
    prompt: str
    tools: list[dict[str, Any]]
    """MCP tool definitions (name, description, inputSchema, outputSchema), distractors included."""
    n_turns: int = 1
    """User turns of the episode; the runner asks for each next one (`POST /api/episodes/{id}/turns`)."""


class TurnRequest(BaseModel):
    """Body of `POST /api/episodes/{id}/turns`: the agent's last reply, for a user that answers it (a simulated
    user); scripted turns ignore it."""

    model_config = ConfigDict(extra="forbid")

    reply: str | None = Field(default=None, max_length=256 * 1024)


class TurnAdvanced(BaseModel):
    turn: int
    """The index of the turn now open (0 is the episode's first prompt)."""
    n_turns: int
    message: str
    tools_changed: bool
    tools: list[dict[str, Any]] | None = None
    """The episode's whole tool list, when it changed."""


class CallStatus(str, Enum):
    ok = "ok"
    tool_error = "tool_error"
    """The tool ran and raised (or returned an error); the agent's fault or the world's answer."""
    invalid_arguments = "invalid_arguments"
    unknown_tool = "unknown_tool"
    sandbox_error = "sandbox_error"
    """The sandbox stopped the code: time, memory, a forbidden operation, a dead worker."""
    injected_failure = "injected_failure"
    upstream_error = "upstream_error"
    """A fronted real MCP server could not be reached or did not answer."""
    cancelled = "cancelled"
    """The client cancelled the call (or its connection dropped) while it ran: stopped, its effects discarded."""


MAX_DIFF_BYTES = 16 * 1024
"""The largest state diff (encoded JSON) a call log entry keeps; the sandbox bounds it, the gym checks again."""


class TableDiff(BaseModel):
    """One table's difference: the first rows added, changed (key and the changed cells, `[before, after]`) and
    removed, and how many of each there were in all."""

    model_config = ConfigDict(extra="forbid")

    added: list[dict[str, JSONValue]] = Field(default_factory=list)
    changed: list[ChangedRow] = Field(default_factory=list)
    removed: list[dict[str, JSONValue]] = Field(default_factory=list)
    n_added: int = Field(default=0, ge=0)
    n_changed: int = Field(default=0, ge=0)
    n_removed: int = Field(default=0, ge=0)
    truncated: bool = False
    """Rows were left out (more than the sandbox shows or scans, or the diff's byte bound)."""


class ChangedRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: dict[str, JSONValue]
    columns: dict[str, tuple[JSONValue, JSONValue]]


class StateDiff(BaseModel):
    """What one successful writing call changed in the episode's SQLite state, per table (unchanged tables left
    out). Computed in the sandbox process that ran the call (`gym_server/sandbox/inside/statediff.py`)."""

    model_config = ConfigDict(extra="forbid")

    tables: dict[str, TableDiff] = Field(default_factory=dict)
    truncated: bool = False
    error: str | None = Field(default=None, max_length=400)
    """Why no diff could be computed (the state change itself stands)."""


class CallLogEntry(BaseModel):
    index: int
    tool: str
    arguments: JSONValue
    status: CallStatus
    result: JSONValue = None
    error: str | None = None
    injected: FailureKind | None = None
    source_arena: str | None = None
    """Set when the tool is a distractor from another arena."""
    started_at: float
    latency_ms: float
    unsafe_sandbox: bool | None = None
    """True when the gym ran this call's arena code without its kernel sandbox (`--unsafe-sandbox`)."""
    turn: int = 0
    """The user turn the call was made in."""
    rendered: str | None = None
    """A suite's rendering of the call (BFCL: the call string its checker executes)."""
    diff: StateDiff | None = None
    """For a successful call that wrote to the episode's state: what it changed (None for every other call)."""


class EpisodeLog(BaseModel):
    episode_id: str
    arena_id: str
    seed: int
    failure: FailurePolicy
    created_at: float
    calls: list[CallLogEntry]
    scored: RewardBreakdown | None = None
    """The episode's final score, once it was scored."""


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    final_answer: JSONValue = None


MAX_BATCH = 256
"""Episodes one batch request may create or finish."""


class EpisodeBatchCreate(BaseModel):
    """Body of `POST /api/episode-batches`: several creations in one request (a GRPO step's, an eval's wave).
    Each item is created exactly as `POST /api/episodes` would create it, in order, each with its own answer."""

    model_config = ConfigDict(extra="forbid")

    episodes: list[EpisodeCreate] = Field(min_length=1, max_length=MAX_BATCH)


class EpisodeFinish(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episode_id: str = Field(min_length=1, max_length=256)
    final_answer: JSONValue = None


class EpisodeBatchFinish(BaseModel):
    """Body of `POST /api/episode-batches/finish`: `POST /api/episodes/{id}/finish` for several episodes."""

    model_config = ConfigDict(extra="forbid")

    episodes: list[EpisodeFinish] = Field(min_length=1, max_length=MAX_BATCH)


class BatchItem(BaseModel):
    """One item's answer in a batch: the HTTP status its own request would have had, and its body (`created`
    or `log` when it succeeded, the contract's `error`/`detail` when not)."""

    status: int
    error: str | None = None
    detail: JSONValue = None
    retry_after_s: float | None = None
    """Set on 429: when to ask again (the Retry-After of a single request)."""


class CreatedItem(BatchItem):
    created: EpisodeCreated | None = None


class FinishedItem(BatchItem):
    log: EpisodeLog | None = None


class EpisodeBatchCreated(BaseModel):
    results: list[CreatedItem]


class EpisodeBatchFinished(BaseModel):
    results: list[FinishedItem]


class RewardBreakdown(BaseModel):
    """ASTRA's F1 trajectory reward and its parts."""

    reward: float
    recall: float
    precision: float
    solved: int
    """Sub-tasks solved (n_hat)."""
    n_subtasks: int
    tool_calls: int
    """Every call the agent made, injected failures included (c)."""
    solved_subtasks: list[str] = Field(default_factory=list)
    solved_by: dict[str, int] = Field(default_factory=dict)
    """Sub-task id -> the index of the call that solved it (scoring's matching, for viewers)."""
    unsolved_subtasks: list[str] = Field(default_factory=list)
    final_answer_correct: bool | None = None
    """Whether the submitted final answer matches the arena's, under the same normalization; None if none
    was submitted. Reported, not part of the reward."""
    verdict: SuiteVerdict | None = None
    """A suite's own verdict (its scorer's), when the arena belongs to a suite; `reward` is then 1 or 0."""


class SuiteVerdict(BaseModel):
    suite: str
    category: str | None = None
    valid: bool
    error_type: str | None = None
    error_message: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    """What produced the verdict (BFCL: the bfcl-eval release and its data version)."""
