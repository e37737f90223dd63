package usage

import (
	"net/url"
	"strings"

	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
)

// Levels above the key. Beside each key's aggregates the ledger keeps the
// same day aggregates (rolled up into months) for the member who owns the
// key and for the key's workspace, and, for records drawn from prepaid
// credits, a credit aggregate of the workspace. They live in the key
// namespace under ids no key can take (a key id never starts with '@'), so
// that counting, rollups and reads are the key's code:
//
//	agg/@m:<workspace>:<member>/d/<YYYY-MM-DD>/<model>   member level
//	agg/@w:<workspace>/d/<YYYY-MM-DD>/<model>            workspace level
//	agg/@c:<workspace>/d/<YYYY-MM-DD>/<model>            credit spend
//
// Each record is folded into its level aggregates in the group commit that
// folds it into its key's, under the same per-producer marks, so a level
// is exactly the sum of its keys once a RecordUsage call is answered, and
// the aggregates grow with active levels and models, never with requests.

// levelMark starts every level id; validate refuses keys that start with it.
const levelMark = "@"

// escapeID keeps a workspace or member from adding a ':' or '/' of its own
// to a level id, which would make two levels share one.
func escapeID(s string) string { return url.QueryEscape(s) }

func workspaceID(ws string) string { return levelMark + "w:" + escapeID(ws) }

func memberID(ws, member string) string {
	return levelMark + "m:" + escapeID(ws) + ":" + escapeID(member)
}

func creditID(ws string) string { return levelMark + "c:" + escapeID(ws) }

// isLevelID tells a level's id from a key's.
func isLevelID(id string) bool { return strings.HasPrefix(id, levelMark) }

// aggIDs are the aggregates a record counts in: its key's first (the one
// that decides whether the record is new), then its member's, its
// workspace's and, drawn from credits, the workspace's credit spend.
func aggIDs(ws, key, owner string, credits bool) []string {
	ids := make([]string, 0, 4)
	ids = append(ids, key)
	if owner != "" {
		ids = append(ids, memberID(ws, owner))
	}
	ids = append(ids, workspaceID(ws))
	if credits {
		ids = append(ids, creditID(ws))
	}
	return ids
}

// totalsTarget is what one TotalsQuery totals: the aggregate id to read,
// and the credit aggregate when the query asks for the credit spend.
type totalsTarget struct {
	id, credit string
}

// targetOf validates a TotalsQuery and names the aggregates it reads.
func targetOf(level typev1.LimitLevel, ws, key, member string, credits bool) (totalsTarget, error) {
	var t totalsTarget
	switch level {
	case typev1.LimitLevel_LIMIT_LEVEL_UNSPECIFIED, typev1.LimitLevel_LIMIT_LEVEL_KEY:
		if key == "" {
			return t, invalidf("a key-level query needs a key")
		}
		if isLevelID(key) {
			return t, invalidf("key %q is not a key id", key)
		}
		t.id = key
	case typev1.LimitLevel_LIMIT_LEVEL_MEMBER:
		if ws == "" || member == "" {
			return t, invalidf("a member-level query needs the workspace and the member")
		}
		t.id = memberID(ws, member)
	case typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE:
		if ws == "" {
			return t, invalidf("a workspace-level query needs the workspace")
		}
		t.id = workspaceID(ws)
	default:
		return t, invalidf("unknown level %d", level)
	}
	if credits {
		if level != typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE {
			return t, invalidf("the credit spend is a workspace's: ask it at the workspace level")
		}
		t.credit = creditID(ws)
	}
	return t, nil
}
