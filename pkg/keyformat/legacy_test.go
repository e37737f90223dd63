package keyformat

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPrefixed(t *testing.T) {
	std, _ := New(Standard, NewID())
	adm, _ := New(Admin, NewID())
	for _, tc := range []struct {
		name, text string
		want       bool
	}{
		{"standard", std, true},
		{"admin", adm, true},
		{"malformed keygate", "kg_nope", true},
		{"other system", "sk-proj-" + strings.Repeat("a", 40), false},
		{"empty", "", false},
		{"prefix in the middle", "x" + std, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, Prefixed(tc.text))
		})
	}
}

func TestPlausibleLegacy(t *testing.T) {
	std, _ := New(Standard, NewID())
	for _, tc := range []struct {
		name, text string
		want       bool
	}{
		{"openai style", "sk-proj-" + strings.Repeat("Ab9_", 40), true},
		{"shortest", strings.Repeat("x", MinLegacyLen), true},
		{"longest", strings.Repeat("x", MaxLegacyLen), true},
		{"punctuation", "abc!#$%&'()*+,-./:;<=>?@[]^_`{|}~", true},
		{"too short", strings.Repeat("x", MinLegacyLen-1), false},
		{"too long", strings.Repeat("x", MaxLegacyLen+1), false},
		{"space", "abcdefgh ijklmnopq", false},
		{"tab", "abcdefgh\tijklmnopq", false},
		{"control", "abcdefgh\x00ijklmnopq", false},
		{"non-ascii", "abcdefghijklmnopé", false},
		{"keygate key", std, false},
		{"malformed keygate", "kg_" + strings.Repeat("x", 40), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, PlausibleLegacy(tc.text))
		})
	}
}

// FuzzPlausibleLegacy: never panics; what it accepts is bounded, printable
// and never keygate-prefixed, and text is either keygate-prefixed, a
// plausible legacy secret, or rejected without a lookup — never both.
func FuzzPlausibleLegacy(f *testing.F) {
	std, _ := New(Standard, NewID())
	f.Add(std)
	f.Add("sk-proj-abcdefghijklmnopqrstuvwxyz")
	f.Add("")
	f.Add("kga_")
	f.Fuzz(func(t *testing.T, s string) {
		ok := PlausibleLegacy(s)
		if Prefixed(s) {
			require.False(t, ok)
			return
		}
		if !ok {
			return
		}
		require.GreaterOrEqual(t, len(s), MinLegacyLen)
		require.LessOrEqual(t, len(s), MaxLegacyLen)
		for i := 0; i < len(s); i++ {
			require.True(t, s[i] > ' ' && s[i] <= '~', "byte %d", i)
		}
	})
}
