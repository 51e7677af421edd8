// Package apikeys keeps the API keys of a finserve deployment in a file
// that holds only their SHA-256 hashes, with each key's name, allowed
// tiers and request rate. A key is shown once, when it is added; the file
// alone cannot give it back.
package apikeys

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"time"
)

// Tiers are the tier names a key may list.
var Tiers = []string{"realtime", "standard", "batch"}

// Prefix starts every key, so that scanners can recognise a leaked one.
const Prefix = "fsk_"

// File is the on-disk form: JSON, mode 0600.
type File struct {
	Version int     `json:"version"`
	Keys    []Entry `json:"keys"`
}

// Entry is one key.
type Entry struct {
	Name   string   `json:"name"`   // unique; logs and metrics name the key by it
	SHA256 string   `json:"sha256"` // of the key, hex
	Hint   string   `json:"hint"`   // the key's first characters, to tell keys apart
	Tiers  []string `json:"tiers"`  // tiers it may use, the first its default on /v1
	Rate   float64  `json:"rate,omitempty"`
	// Concurrency bounds the key's requests in flight (0: unbounded), so
	// that one key cannot hold every sequence slot.
	Concurrency int `json:"concurrency,omitempty"`
	// Models are the model ids the key may use (all when empty), on a
	// server that serves several.
	Models  []string  `json:"models,omitempty"`
	Created time.Time `json:"created"`
	// Previous are the key's earlier values after a rotation (Rotate),
	// each accepted until it expires, so that clients can move to the new
	// key without an outage.
	Previous []Previous `json:"previous,omitempty"`

	sum [32]byte
}

// Previous is a rotated-out value of a key.
type Previous struct {
	SHA256  string    `json:"sha256"`
	Hint    string    `json:"hint"`
	Expires time.Time `json:"expires"`
}

// Set is a loaded, checked key file.
type Set struct {
	Keys []Entry
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// CheckMode refuses a secret file (key file, TLS key, audit key) that
// others may read or that anyone but its owner may write, as sshd refuses
// private keys: 0600, or 0640/0440 for the service's group, pass; 0644,
// 0660 and 0604 do not. It follows symlinks (Kubernetes Secret mounts are
// links into ..data) and judges the file itself.
func CheckMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if m := fi.Mode().Perm(); m&0o027 != 0 {
		return fmt.Errorf("%s is open to others (mode %v): it holds secrets; chmod 600 (or 640 for the service's group)", path, m)
	}
	return nil
}

// Load reads and checks a key file, refusing one open to others
// (CheckMode).
func Load(path string) (*Set, error) {
	if err := CheckMode(path); err != nil {
		return nil, fmt.Errorf("API key file: %w", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading API key file: %w", err)
	}
	s, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("API key file %s: %w", path, err)
	}
	return s, nil
}

// Parse checks a key file's contents.
func Parse(data []byte) (*Set, error) {
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("version %d, want 1", f.Version)
	}
	seen := map[string]bool{}
	for i := range f.Keys {
		e := &f.Keys[i]
		if err := e.check(); err != nil {
			return nil, fmt.Errorf("key %d (%q): %w", i, e.Name, err)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("key name %q appears twice", e.Name)
		}
		seen[e.Name] = true
		b, _ := hex.DecodeString(e.SHA256)
		copy(e.sum[:], b)
	}
	return &Set{Keys: f.Keys}, nil
}

func (e *Entry) check() error {
	if !nameRE.MatchString(e.Name) {
		return errors.New("a name is 1-64 letters, digits, dots, dashes or underscores")
	}
	if b, err := hex.DecodeString(e.SHA256); err != nil || len(b) != sha256.Size {
		return errors.New("sha256 must be 64 hex digits")
	}
	if len(e.Tiers) == 0 {
		return errors.New("at least one tier is needed")
	}
	for _, t := range e.Tiers {
		if !slices.Contains(Tiers, t) {
			return fmt.Errorf("unknown tier %q (tiers: realtime, standard, batch)", t)
		}
	}
	if e.Rate < 0 || math.IsNaN(e.Rate) || math.IsInf(e.Rate, 0) {
		return errors.New("rate must be a non-negative number of requests per second (0: unlimited)")
	}
	if e.Concurrency < 0 || e.Concurrency > 1<<20 {
		return errors.New("concurrency must be 0 (unbounded) to 1048576 requests in flight")
	}
	for i, m := range e.Models {
		if m == "" || len(m) > 256 || slices.Contains(e.Models[:i], m) {
			return fmt.Errorf("model %d: model ids are 1-256 bytes, each named once", i)
		}
	}
	for i, p := range e.Previous {
		if b, err := hex.DecodeString(p.SHA256); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("previous key %d: sha256 must be 64 hex digits", i)
		}
		if p.Expires.IsZero() {
			return fmt.Errorf("previous key %d: an expiry is needed", i)
		}
	}
	return nil
}

// Match returns the entry whose key is presented (its current value, or
// a previous one before its expiry), comparing the hash with every value
// in constant time.
func (s *Set) Match(presented string) (*Entry, bool) {
	sum := sha256.Sum256([]byte(presented))
	now := time.Now()
	found := -1
	for i := range s.Keys {
		if subtle.ConstantTimeCompare(sum[:], s.Keys[i].sum[:]) == 1 {
			found = i
		}
		for _, p := range s.Keys[i].Previous {
			b, _ := hex.DecodeString(p.SHA256)
			if subtle.ConstantTimeCompare(sum[:], b) == 1 && now.Before(p.Expires) {
				found = i
			}
		}
	}
	if found < 0 {
		return nil, false
	}
	return &s.Keys[found], true
}

// Add creates a key named name in the file at path (created, mode 0600,
// when missing), stores its hash and returns the key: the only time it is
// ever shown.
func Add(path, name string, tiers []string, rate float64) (string, error) {
	return AddLimited(path, name, tiers, rate, 0)
}

// AddLimited is Add with a bound on the key's requests in flight.
func AddLimited(path, name string, tiers []string, rate float64, concurrency int) (string, error) {
	return AddKey(path, name, Limits{Tiers: tiers, Rate: rate, Concurrency: concurrency})
}

// Limits are what a new key may do: Entry's fields of the same names.
type Limits struct {
	Tiers       []string
	Rate        float64
	Concurrency int
	Models      []string
}

// AddKey is Add with every limit a key can have.
func AddKey(path, name string, l Limits) (string, error) {
	tiers, rate, concurrency := l.Tiers, l.Rate, l.Concurrency
	f, err := readForUpdate(path)
	if err != nil {
		return "", err
	}
	for _, e := range f.Keys {
		if e.Name == name {
			return "", fmt.Errorf("a key named %q exists; revoke or rotate it", name)
		}
	}
	key, sum, err := newKey()
	if err != nil {
		return "", err
	}
	e := Entry{Name: name, SHA256: sum, Hint: key[:len(Prefix)+4], Tiers: tiers, Rate: rate, Concurrency: concurrency,
		Models: l.Models, Created: time.Now().UTC().Truncate(time.Second)}
	if err := e.check(); err != nil {
		return "", err
	}
	f.Keys = append(f.Keys, e)
	if err := write(path, f); err != nil {
		return "", err
	}
	return key, nil
}

// Rotate gives the key named name a new value, returned (the only time
// it is shown), and keeps accepting its current value for overlap (0:
// not at all), so that clients can switch without an outage. The name,
// tiers and limits stay: the tenant and its cached prefixes are the
// same. Values whose overlap has passed are dropped.
func Rotate(path, name string, overlap time.Duration, now time.Time) (string, error) {
	if overlap < 0 {
		return "", errors.New("the overlap must not be negative")
	}
	f, err := readForUpdate(path)
	if err != nil {
		return "", err
	}
	i := slices.IndexFunc(f.Keys, func(e Entry) bool { return e.Name == name })
	if i < 0 {
		return "", fmt.Errorf("no key named %q in %s", name, path)
	}
	e := &f.Keys[i]
	key, sum, err := newKey()
	if err != nil {
		return "", err
	}
	e.Previous = slices.DeleteFunc(e.Previous, func(p Previous) bool { return !now.Before(p.Expires) })
	if overlap > 0 {
		e.Previous = append(e.Previous, Previous{SHA256: e.SHA256, Hint: e.Hint, Expires: now.Add(overlap).UTC().Truncate(time.Second)})
	}
	e.SHA256, e.Hint = sum, key[:len(Prefix)+4]
	if err := write(path, f); err != nil {
		return "", err
	}
	return key, nil
}

// readForUpdate reads the key file at path for a change; a missing file
// is an empty one.
func readForUpdate(path string) (*File, error) {
	f := &File{Version: 1}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		s, err := Parse(data)
		if err != nil {
			return nil, fmt.Errorf("API key file %s: %w", path, err)
		}
		f.Keys = s.Keys
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("reading API key file: %w", err)
	}
	return f, nil
}

// newKey makes a random key and its hash (hex).
func newKey() (key, sum string, err error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", "", err
	}
	key = Prefix + base64.RawURLEncoding.EncodeToString(raw[:])
	h := sha256.Sum256([]byte(key))
	return key, hex.EncodeToString(h[:]), nil
}

// Revoke removes the key named name.
func Revoke(path, name string) error {
	s, err := Load(path)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(s.Keys, func(e Entry) bool { return e.Name == name })
	if i < 0 {
		return fmt.Errorf("no key named %q in %s", name, path)
	}
	return write(path, &File{Version: 1, Keys: slices.Delete(s.Keys, i, i+1)})
}

// write replaces the file atomically, so that a server reloading it on
// SIGHUP never reads half of it. A file that exists keeps its owner,
// group and mode (when they pass CheckMode): `keys add` run as root must
// not make the service's key file unreadable to the service. A new file
// is 0600, owned by whoever runs the command.
func write(path string, f *File) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	mode, uid, gid := fs.FileMode(0o600), -1, -1
	if fi, err := os.Stat(path); err == nil {
		if m := fi.Mode().Perm(); m&0o027 == 0 {
			mode = m
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keys-*")
	if err != nil {
		return fmt.Errorf("writing API key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("writing API key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if uid >= 0 && (uid != os.Geteuid() || gid != os.Getegid()) {
		if err := os.Lchown(tmp.Name(), uid, gid); err != nil {
			return fmt.Errorf("keeping the API key file's owner %d:%d: %w", uid, gid, err)
		}
	}
	if err := os.Chmod(tmp.Name(), mode); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
