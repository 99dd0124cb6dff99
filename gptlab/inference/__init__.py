"""Opening any model for inference: one object with its model, tokenizer, prompt format and stop ids."""
