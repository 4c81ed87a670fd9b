"""Tools the agent can call (installed as ``ibllm_agent.tools``): one module per tool family."""
