// Package keyformat creates and parses keygate API keys.
//
// A key reads kg_<id>_<secret><checksum> (admin keys start kga_): the prefix
// lets secret scanners recognise it, id is the public key id, secret is 44
// base62 characters (262 bits from crypto/rand), and the 6-character CRC-32
// checksum rejects a mistyped key before any lookup.
package keyformat

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"hash/crc32"
	"strings"
)

// Kind tells inference keys from management keys.
type Kind int

const (
	Standard Kind = iota + 1
	Admin
)

const (
	standardPrefix = "kg_"
	adminPrefix    = "kga_"
	// IDLen is the length of a key id.
	IDLen = 16
	// SecretLen is the number of base62 characters of the secret part.
	SecretLen   = 44
	checksumLen = 6
	// PartialLen is how many trailing characters listings show.
	PartialLen = 6

	base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	base36 = "0123456789abcdefghijklmnopqrstuvwxyz"
)

// ErrMalformed means the text is not a keygate key (or was mistyped). The
// message never contains the key.
var ErrMalformed = errors.New("malformed API key")

// Key is a parsed key.
type Key struct {
	Kind   Kind
	ID     string
	Secret string
}

// Hash is the SHA-256 of a secret; only hashes are stored.
type Hash [sha256.Size]byte

// NewID returns a new random key id: 16 lower-case base36 characters.
func NewID() string { return randomString(base36, IDLen) }

// New returns the full text of a new key with the given id and a fresh secret.
func New(kind Kind, id string) (text string, k Key) {
	k = Key{Kind: kind, ID: id, Secret: randomString(base62, SecretLen)}
	return k.String(), k
}

// String renders the key with its checksum.
func (k Key) String() string {
	prefix := standardPrefix
	if k.Kind == Admin {
		prefix = adminPrefix
	}
	var b strings.Builder
	b.Grow(len(prefix) + len(k.ID) + 1 + len(k.Secret) + checksumLen)
	b.WriteString(prefix)
	b.WriteString(k.ID)
	b.WriteByte('_')
	b.WriteString(k.Secret)
	body := b.String()
	b.WriteString(checksum(body))
	return b.String()
}

// Hash returns the SHA-256 of the secret part.
func (k Key) Hash() Hash { return sha256.Sum256([]byte(k.Secret)) }

// Partial returns the last characters of the full key, for display.
func Partial(text string) string {
	if len(text) < PartialLen {
		return ""
	}
	return "…" + text[len(text)-PartialLen:]
}

// Equal compares two hashes in constant time.
func Equal(a, b Hash) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

// Parse checks the format and checksum of text. It does no lookup and never
// puts text into its error.
func Parse(text string) (Key, error) {
	var k Key
	var rest string
	switch {
	case strings.HasPrefix(text, adminPrefix):
		k.Kind, rest = Admin, text[len(adminPrefix):]
	case strings.HasPrefix(text, standardPrefix):
		k.Kind, rest = Standard, text[len(standardPrefix):]
	default:
		return Key{}, ErrMalformed
	}
	if len(rest) != IDLen+1+SecretLen+checksumLen || rest[IDLen] != '_' {
		return Key{}, ErrMalformed
	}
	k.ID = rest[:IDLen]
	k.Secret = rest[IDLen+1 : IDLen+1+SecretLen]
	sum := rest[IDLen+1+SecretLen:]
	if !only(k.ID, base36) || !only(k.Secret, base62) {
		return Key{}, ErrMalformed
	}
	body := text[:len(text)-checksumLen]
	if subtle.ConstantTimeCompare([]byte(checksum(body)), []byte(sum)) != 1 {
		return Key{}, ErrMalformed
	}
	return k, nil
}

// ValidID reports whether s has the shape of a key id.
func ValidID(s string) bool { return len(s) == IDLen && only(s, base36) }

func checksum(body string) string {
	v := crc32.ChecksumIEEE([]byte(body))
	var out [checksumLen]byte
	for i := checksumLen - 1; i >= 0; i-- {
		out[i] = base62[v%62]
		v /= 62
	}
	return string(out[:])
}

func only(s, alphabet string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(alphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// randomString draws n characters uniformly from alphabet with crypto/rand,
// rejecting bytes past the largest multiple of len(alphabet) to avoid bias.
func randomString(alphabet string, n int) string {
	limit := byte(256 - 256%len(alphabet))
	out := make([]byte, 0, n)
	buf := make([]byte, n*2)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			panic("keyformat: crypto/rand failed: " + err.Error())
		}
		for _, c := range buf {
			if c < limit && len(out) < n {
				out = append(out, alphabet[int(c)%len(alphabet)])
			}
		}
	}
	return string(out)
}
