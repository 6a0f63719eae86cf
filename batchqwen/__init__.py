"""batchqwen: a dependable batch runner for the Qwen-Omni Realtime API, with a local simulator."""

__version__ = "0.1.0"
