"""Training jobs (trl SFT / DPO / GRPO, full or LoRA), run in a child process by `runner`."""
