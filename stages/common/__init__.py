"""What every stage shares: settings declarations, model loading, device and dtype, causal-LM
helpers (scoring, generation, output layer), tokenizer checks and launcher ranks."""
