package main

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// readConfig reads a YAML config file of flag settings: a mapping from
// flag names (dashes or underscores) to scalars or lists of scalars. It
// returns the values as flag strings, refusing keys that name no flag.
func readConfig(path string, lookup func(string) *pflag.Flag) (map[string][]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	out := map[string][]string{}
	for key, v := range raw {
		name := strings.ReplaceAll(key, "_", "-")
		if name == "config" || lookup(name) == nil {
			return nil, fmt.Errorf("config %s: unknown setting %q (the keys are the flags of `finserve serve --help`)", path, key)
		}
		switch v := v.(type) {
		case map[string]any:
			// a --tier-NAME mapping: key=value pairs, in key order
			s, err := pairs(v)
			if err != nil {
				return nil, fmt.Errorf("config %s: %s: %w", path, key, err)
			}
			out[name] = []string{s}
		case []any:
			for _, e := range v {
				if m, ok := e.(map[string]any); ok {
					// a list of mappings: each one key=value,... (a
					// model: id, path and its settings)
					s, err := pairs(m)
					if err != nil {
						return nil, fmt.Errorf("config %s: %s: %w", path, key, err)
					}
					out[name] = append(out[name], s)
					continue
				}
				s, err := scalar(e)
				if err != nil {
					return nil, fmt.Errorf("config %s: %s: %w", path, key, err)
				}
				out[name] = append(out[name], s)
			}
		default:
			s, err := scalar(v)
			if err != nil {
				return nil, fmt.Errorf("config %s: %s: %w", path, key, err)
			}
			out[name] = []string{s}
		}
	}
	return out, nil
}

func pairs(m map[string]any) (string, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		s, err := scalar(m[k])
		if err != nil {
			return "", fmt.Errorf("%s: %w", k, err)
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strings.ReplaceAll(k, "_", "-") + "=" + s)
	}
	return b.String(), nil
}

func scalar(v any) (string, error) {
	switch v := v.(type) {
	case string, bool, int, int64, uint64, float64:
		return fmt.Sprint(v), nil
	case nil:
		return "", fmt.Errorf("empty value")
	}
	return "", fmt.Errorf("want a scalar or a list of scalars, got %T", v)
}
