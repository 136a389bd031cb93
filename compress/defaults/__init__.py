"""The default model (SmolLM2-135M-Instruct, dequantized from a Q4_1 GGUF) and text (Jane Austen), fetched offline."""
