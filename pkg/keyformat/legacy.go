package keyformat

import "strings"

// Secrets imported from another system (ImportKeys) keep that system's
// format, which keygate does not know; the keystore finds them by their
// SHA-256. What can be said of them without a lookup is only that they are
// plausible: these bounds cover the API keys of the common providers and
// gateways (OpenAI's project keys are about 170 characters).
const (
	// MinLegacyLen is the shortest imported secret accepted.
	MinLegacyLen = 16
	// MaxLegacyLen is the longest imported secret accepted, and so the
	// longest text that is any kind of key.
	MaxLegacyLen = 256
)

// Prefixed reports whether text claims to be a keygate key (starts with
// kg_ or kga_): such text is judged by Parse alone, and a malformed one is
// never looked up.
func Prefixed(text string) bool {
	return strings.HasPrefix(text, standardPrefix) || strings.HasPrefix(text, adminPrefix)
}

// PlausibleLegacy reports whether text may be an imported secret: not
// keygate-prefixed, MinLegacyLen to MaxLegacyLen bytes, every byte
// printable ASCII other than space. Anything else is rejected without a
// lookup.
func PlausibleLegacy(text string) bool {
	if len(text) < MinLegacyLen || len(text) > MaxLegacyLen || Prefixed(text) {
		return false
	}
	for i := 0; i < len(text); i++ {
		if c := text[i]; c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}
