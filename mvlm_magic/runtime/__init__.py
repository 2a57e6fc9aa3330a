"""Everything a question needs, without torch: preprocess, prompt, prefill/decode, sampling, chat."""
