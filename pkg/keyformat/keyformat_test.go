package keyformat

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	for _, kind := range []Kind{Standard, Admin} {
		id := NewID()
		require.True(t, ValidID(id))
		text, k := New(kind, id)
		got, err := Parse(text)
		require.NoError(t, err)
		require.Equal(t, k, got)
		require.Equal(t, text, got.String())
		require.Len(t, k.Secret, SecretLen)
		require.True(t, Equal(k.Hash(), got.Hash()))
		require.Equal(t, "…"+text[len(text)-PartialLen:], Partial(text))
	}
	a, _ := New(Standard, NewID())
	b, _ := New(Standard, NewID())
	require.NotEqual(t, a, b)
}

func TestParseRejects(t *testing.T) {
	text, k := New(Standard, NewID())
	flip := func(s string, i int) string {
		c := byte('A')
		if s[i] == 'A' {
			c = 'B'
		}
		return s[:i] + string(c) + s[i+1:]
	}
	cases := map[string]string{
		"empty":             "",
		"no prefix":         text[3:],
		"other prefix":      "sk_" + text[3:],
		"admin prefix":      "kga_" + text[3:],
		"short":             text[:len(text)-1],
		"long":              text + "0",
		"secret typo":       flip(text, 30),
		"checksum typo":     flip(text, len(text)-1),
		"upper-case id":     "kg_" + strings.ToUpper(k.ID) + text[3+IDLen:],
		"missing separator": text[:3+IDLen] + "-" + text[4+IDLen:],
		"non-base62 secret": Key{Kind: Standard, ID: k.ID, Secret: strings.Repeat("-", SecretLen)}.String(),
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(s)
			require.ErrorIs(t, err, ErrMalformed)
			if s != "" {
				require.NotContains(t, err.Error(), s)
			}
		})
	}
}

func TestPartialShort(t *testing.T) { require.Empty(t, Partial("abc")) }

// FuzzParse: Parse never panics, and what it accepts renders back to the
// same text with a well-formed id and secret.
func FuzzParse(f *testing.F) {
	for _, kind := range []Kind{Standard, Admin} {
		text, _ := New(kind, NewID())
		f.Add(text)
	}
	f.Add("")
	f.Add("kg_")
	f.Add("kga_0123456789abcdef_")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := Parse(s)
		if err != nil {
			require.Equal(t, Key{}, k)
			return
		}
		require.Equal(t, s, k.String())
		require.True(t, ValidID(k.ID))
		require.Len(t, k.Secret, SecretLen)
	})
}
