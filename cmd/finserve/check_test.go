package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/models"
)

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny.gguf")
	if err := models.Generate(context.Background(), model, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(dir, "keys.json")
	if _, err := apikeys.Add(keys, "ops", []string{"standard"}, 0); err != nil {
		t.Fatal(err)
	}
	amlFile := filepath.Join(dir, "aml.yaml")
	os.WriteFile(amlFile, aml.DefaultYAML(), 0o644)
	badAML := filepath.Join(dir, "bad-aml.yaml")
	os.WriteFile(badAML, bytes.Replace(aml.DefaultYAML(), []byte("severity: medium"), []byte("severity: severe"), 1), 0o644)
	openKeys := filepath.Join(dir, "open-keys.json")
	data, _ := os.ReadFile(keys)
	os.WriteFile(openKeys, data, 0o644)
	corrupt := filepath.Join(dir, "corrupt.gguf")
	data, _ = os.ReadFile(model)
	os.WriteFile(corrupt, data[:len(data)/2], 0o644)

	good := "model: " + model + "\napi-keys: " + keys + "\naml-config: " + amlFile + "\ntier-batch: {max-running: 2}\nparallel: 4\n"
	cases := []struct {
		name, body string
		want       []string // problems mentioned; none: ok
	}{
		{"good", good, nil},
		{"unknown key", good + "paralel: 4\n", []string{"paralel"}},
		{"bad value", strings.Replace(good, "parallel: 4", "parallel: four", 1), []string{"parallel"}},
		{"bad tier", strings.Replace(good, "max-running: 2", "max-running: lots", 1), []string{"max-running"}},
		{"missing model", strings.Replace(good, model, filepath.Join(dir, "none.gguf"), 1), []string{"model"}},
		{"corrupt model", strings.Replace(good, model, corrupt, 1), []string{"model"}},
		{"open key file", strings.Replace(good, keys, openKeys, 1), []string{"chmod 600"}},
		{"bad aml", strings.Replace(good, amlFile, badAML, 1), []string{"severity"}},
		{"tls half", good + "tls-cert: " + keys + "\n", []string{"tls"}},
		{"split mode", good + "split-mode: diagonal\n", []string{"split mode"}},
		{"gpu layers all", good + "gpu-layers: all\ncache-type-k: q8_0\ncache-type-v: q4_0\n", nil},
		{"log settings", good + "log-format: json\nlog_level: debug\n", nil},
		{"log format", good + "log-format: xml\n", []string{"log-format"}},
		{"gpu layers", good + "gpu-layers: most\n", []string{"gpu-layers", "auto"}},
		{"gpu layers below -1", good + "gpu-layers: -2\n", []string{"gpu-layers"}},
		{"kv cache type", good + "cache-type-v: q4_K\n", []string{"cache-type-v", "q8_0"}},
		// 17 shares: more than llama.cpp's device limit and any machine's GPUs.
		{"tensor split", good + "tensor-split: " + strings.Repeat("1,", 16) + "1\n", []string{"tensor split"}},
	}
	for _, tc := range cases {
		path := filepath.Join(dir, "serve.yaml")
		os.WriteFile(path, []byte(tc.body), 0o644)
		var out bytes.Buffer
		cmd := newConfigCmd()
		cmd.SilenceErrors, cmd.SilenceUsage = true, true
		cmd.SetArgs([]string{"check", path})
		cmd.SetOut(&out)
		err := cmd.Execute()
		if tc.want == nil {
			if err != nil || !strings.Contains(out.String(), "ok: ") {
				t.Errorf("%s: %v %s", tc.name, err, out.String())
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted: %s", tc.name, out.String())
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String()+err.Error(), w) {
				t.Errorf("%s: %v %s, want a mention of %q", tc.name, err, out.String(), w)
			}
		}
	}
}
