"""The default system prompt: one for eval, synthesis and training, so SFT, GRPO and eval show a policy the same
prompt. Its own module so that the command line's config models import it without the MCP client."""

DEFAULT_SYSTEM_PROMPT = (
    "You are a capable assistant that solves the user's task by calling the provided tools. Call tools "
    "whenever they help, several at once when they are independent. When you have the answer, reply with it "
    "directly and briefly, without calling a tool."
)
