"""Training recipes (installed as ``ibllm_agent.training``)."""
