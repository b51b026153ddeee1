"""distillation_llm package."""
