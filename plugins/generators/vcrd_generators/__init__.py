"""Built-in vcrd rollout generators: ``hf`` (transformers ``generate``) and ``vllm`` (offline ``vllm.LLM``)."""
