#!/usr/bin/env python3
"""End-to-end gateway tests over real processes, driven by the official OpenAI Python client:
`sluice serve --config` runs two engines of different models in one process (SmolLM2 and
Gemma 3) and routes a third name to an OpenAI-compatible upstream (`sluice mock-upstream`),
which is also SmolLM2's fallback.

    python3 tests/e2e/test_gateway.py        # SLUICE_BIN overrides the binary
"""
import json
import os
import subprocess
import sys
import time
import unittest
import urllib.request

import openai

from test_openai_client import BIN, ROOT, free_port

MODELS = os.path.join(ROOT, "models")


def wait_ok(url, proc, what, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see target/e2e-*.log")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready in {timeout} s")


class GatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.procs, cls.logs = [], []
        mock_port, port = free_port(), free_port()
        cls.mock = cls.spawn("mock", [BIN, "mock-upstream", "--port", str(mock_port), "--tokens", "5"])
        wait_ok(f"http://127.0.0.1:{mock_port}/health", cls.mock, "mock-upstream")
        config = os.path.join(ROOT, "target", "e2e-gateway.toml")
        with open(config, "w") as f:
            f.write(f"""
[backends.local-smollm2]
kind = "engine"
model_path = "{MODELS}/SmolLM2-135M-Instruct.Q4_1.gguf"
model = "smollm2"
threads = 2
kv_cache_memory = "128MiB"
[backends.local-gemma3]
kind = "engine"
model_path = "{MODELS}/gemma-3-270m-q4_k_m.gguf"
model = "gemma3"
threads = 2
kv_cache_memory = "128MiB"
[backends.upstream]
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
model = "mock-model"
context_window = 4096
health = {{ interval_ms = 100, timeout_ms = 500 }}
[models.smollm2]
targets = ["local-smollm2"]
fallback = ["upstream"]
[models.gemma3]
targets = ["local-gemma3"]
[models.mocked]
targets = ["upstream"]
retry = {{ backoff_base_ms = 5 }}
""")
        cls.gateway = cls.spawn("gateway", [BIN, "serve", "--config", config, "--port", str(port)])
        wait_ok(f"http://127.0.0.1:{port}/ready", cls.gateway, "sluice serve --config")
        cls.port = port
        cls.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)

    @classmethod
    def spawn(cls, name, argv):
        log = open(os.path.join(ROOT, "target", f"e2e-{name}.log"), "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        cls.procs.append(proc)
        cls.logs.append(log)
        return proc

    @classmethod
    def tearDownClass(cls):
        for p in cls.procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in cls.logs:
            log.close()

    def chat(self, model, content="Name a colour.", **kw):
        kw = {"max_tokens": 8, "temperature": 0, **kw}
        return self.client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}], **kw)

    def complete(self, model, prompt="The colours of the rainbow are", **kw):
        kw = {"max_tokens": 8, "temperature": 0, **kw}
        return self.client.completions.with_raw_response.create(model=model, prompt=prompt, **kw)

    def test_1_routes_are_listed(self):
        ids = sorted(m.id for m in self.client.models.list().data)
        self.assertEqual(ids, ["gemma3", "mocked", "smollm2"])

    def test_2_two_engines_of_different_models_in_one_process(self):
        # (The packaged Gemma 3 GGUF carries no chat template: text completions for it.)
        for model in ("smollm2", "gemma3"):
            raw = self.complete(model)
            self.assertEqual(raw.headers["x-sluice-backend"], f"local-{model}")
            self.assertEqual(raw.headers["x-sluice-attempts"], "1")
            self.assertTrue(raw.headers["x-request-id"].startswith("req-"))
            r = raw.parse()
            self.assertEqual(r.model, model)
            self.assertTrue(r.choices[0].text)
            self.assertEqual(r.usage.completion_tokens, 8)

    def test_3_streaming_through_the_gateway(self):
        text, usage = "", None
        for chunk in self.client.completions.create(
                model="gemma3", prompt="Once upon a time", max_tokens=8, temperature=0,
                stream=True, stream_options={"include_usage": True}):
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.text or ""
        whole = self.complete("gemma3", "Once upon a time").parse()
        self.assertEqual(text, whole.choices[0].text)
        self.assertEqual(usage.completion_tokens, whole.usage.completion_tokens)

    def test_4_openai_compatible_upstream(self):
        raw = self.chat("mocked")
        self.assertEqual(raw.headers["x-sluice-backend"], "upstream")
        r = raw.parse()
        self.assertEqual(r.choices[0].message.content, "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ")
        self.assertEqual(r.usage.completion_tokens, 8)

    def test_5_errors_say_what_broke(self):
        with self.assertRaises(openai.NotFoundError) as e:
            self.chat("nope")
        self.assertEqual(e.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat("smollm2", max_tokens=100000)
        self.assertEqual(e.exception.body["code"], "context_length_exceeded")
        self.assertIn("8192", e.exception.body["message"])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics") as m:
            metrics = m.read().decode()
        self.assertIn('sluice:gateway_requests_served_total{backend="local-gemma3",kind="engine"}', metrics)
        self.assertIn('sluice:num_requests_running{model_name="gemma3"}', metrics)
        self.assertIn('sluice:num_requests_running{model_name="smollm2"}', metrics)

    def test_6_a_dead_upstream_is_named(self):
        self.mock.kill()
        self.mock.wait()
        with self.assertRaises(openai.APIStatusError) as e:
            self.chat("mocked")
        self.assertIn(e.exception.status_code, (502, 503))
        self.assertIn("upstream", e.exception.body["message"])
        # SmolLM2 keeps answering from its engine; its fallback being dead does not matter.
        self.assertEqual(self.chat("smollm2").headers["x-sluice-backend"], "local-smollm2")


if __name__ == "__main__":
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: build it first (cargo build -p sluice)")
    unittest.main(verbosity=2)
