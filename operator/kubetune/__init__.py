"""kubetune: one FineTuneJob resource -> a complete LLM fine-tuning run on KubeRay."""

__version__ = "0.1.0"
