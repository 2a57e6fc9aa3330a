"""The server's counters in Prometheus' text format (`GET /metrics`): requests by outcome, prompt and answer tokens,
the queue, and a histogram of the first token's latency (queue wait included: what a student waits)."""

from __future__ import annotations

import threading

FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds
OUTCOMES = ("ok", "cancelled", "client_error", "server_error")


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self.prompt_tokens = self.completion_tokens = self.prefill_tokens = 0
        self.first_token_counts = [0] * len(FIRST_TOKEN_BUCKETS)  # per bucket, not cumulative
        self.first_token_sum, self.first_token_count = 0.0, 0

    def request(self, outcome: str) -> None:
        with self._lock:
            self.requests[outcome] += 1

    def tokens(self, prompt: int, completion: int, prefill: int) -> None:
        with self._lock:
            self.prefill_tokens += prefill
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.first_token_sum += seconds
            self.first_token_count += 1
            for i, bound in enumerate(FIRST_TOKEN_BUCKETS):
                if seconds <= bound:
                    self.first_token_counts[i] += 1
                    break

    def render(self, queued: int, running: int, steps: int = 0, step_rows: int = 0,
               step_seconds: float = 0.0) -> str:
        with self._lock:
            lines = ["# HELP mvlm_requests_total Chat-completion requests by outcome.",
                     "# TYPE mvlm_requests_total counter"]
            lines += [f'mvlm_requests_total{{outcome="{k}"}} {v}' for k, v in self.requests.items()]
            lines += ["# HELP mvlm_prompt_tokens_total Prompt positions of answered requests (image tokens included).",
                      "# TYPE mvlm_prompt_tokens_total counter", f"mvlm_prompt_tokens_total {self.prompt_tokens}",
                      "# HELP mvlm_prefill_tokens_total Of the prompt positions, those fed to the model (the rest "
                      "came from the KV cache).", "# TYPE mvlm_prefill_tokens_total counter",
                      f"mvlm_prefill_tokens_total {self.prefill_tokens}",
                      "# HELP mvlm_completion_tokens_total Tokens generated.",
                      "# TYPE mvlm_completion_tokens_total counter",
                      f"mvlm_completion_tokens_total {self.completion_tokens}",
                      "# HELP mvlm_queue_length Requests waiting for the engine.", "# TYPE mvlm_queue_length gauge",
                      f"mvlm_queue_length {queued}",
                      "# HELP mvlm_requests_running Requests being answered.", "# TYPE mvlm_requests_running gauge",
                      f"mvlm_requests_running {running}",
                      "# HELP mvlm_decode_steps_total Batched decoding calls, each one token for each of its rows.",
                      "# TYPE mvlm_decode_steps_total counter", f"mvlm_decode_steps_total {steps}",
                      "# HELP mvlm_decode_step_rows_total Rows those calls held in all (mean batch = rows / steps).",
                      "# TYPE mvlm_decode_step_rows_total counter", f"mvlm_decode_step_rows_total {step_rows}",
                      "# HELP mvlm_decode_step_seconds_total Time those calls took (rows / seconds: tokens a second).",
                      "# TYPE mvlm_decode_step_seconds_total counter",
                      f"mvlm_decode_step_seconds_total {step_seconds:.6f}",
                      "# HELP mvlm_first_token_seconds From the request's arrival to its first token.",
                      "# TYPE mvlm_first_token_seconds histogram"]
            total = 0
            for bound, count in zip(FIRST_TOKEN_BUCKETS, self.first_token_counts):
                total += count
                lines.append(f'mvlm_first_token_seconds_bucket{{le="{bound}"}} {total}')
            lines += [f'mvlm_first_token_seconds_bucket{{le="+Inf"}} {self.first_token_count}',
                      f"mvlm_first_token_seconds_sum {self.first_token_sum:.6f}",
                      f"mvlm_first_token_seconds_count {self.first_token_count}"]
        return "\n".join(lines) + "\n"
