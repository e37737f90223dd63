// Package limitkey names what a limiter keeps state for (entities) and how
// entities are routed to replicas. An item that names a workspace is
// routed by its workspace, so that one replica holds the key's, its
// member's and its workspace's windows and decides them in one step; an
// item without one is routed by its key, as before levels existed.
//
// Entity names:
//
//	<key>                    a key of an item without a workspace
//	<workspace>/k/<key>      a key
//	<workspace>/m/<member>   the member level (every key the member owns)
//	<workspace>/w            the workspace level
//
// Workspace ids and key ids never contain '/', so the route of an entity
// is its name up to the first '/'.
package limitkey

import (
	"strings"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
)

// Route is what an item for key in workspace is routed by.
func Route(key, workspace string) string {
	if workspace != "" {
		return workspace
	}
	return key
}

// Key names a key's entity.
func Key(workspace, key string) string {
	if workspace == "" {
		return key
	}
	return workspace + "/k/" + key
}

// Member names the member level's entity.
func Member(workspace, member string) string { return workspace + "/m/" + member }

// Workspace names the workspace level's entity.
func Workspace(workspace string) string { return workspace + "/w" }

// Shard is the route of an entity: the replica owning it is the ring's
// owner of Shard(name).
func Shard(name string) string {
	if i := strings.IndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return name
}

// Entity is a parsed entity name.
type Entity struct {
	Level     typev1.LimitLevel
	Workspace string
	// ID is the key id, the member subject, or the workspace id.
	ID string
}

// Parse reads an entity name; a name of no known shape is a key.
func Parse(name string) Entity {
	ws, rest, ok := strings.Cut(name, "/")
	if !ok {
		return Entity{Level: typev1.LimitLevel_LIMIT_LEVEL_KEY, ID: name}
	}
	switch {
	case rest == "w":
		return Entity{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, Workspace: ws, ID: ws}
	case strings.HasPrefix(rest, "m/"):
		return Entity{Level: typev1.LimitLevel_LIMIT_LEVEL_MEMBER, Workspace: ws, ID: rest[2:]}
	case strings.HasPrefix(rest, "k/"):
		return Entity{Level: typev1.LimitLevel_LIMIT_LEVEL_KEY, Workspace: ws, ID: rest[2:]}
	}
	return Entity{Level: typev1.LimitLevel_LIMIT_LEVEL_KEY, ID: name}
}

// KindName is a limit's name in headers, alerts and the request log:
// rpm, rpd, tpm, tpd, token_cap, budget, credits.
func KindName(k limiterv1.LimitKind) string {
	switch k {
	case limiterv1.LimitKind_LIMIT_KIND_RPM:
		return "rpm"
	case limiterv1.LimitKind_LIMIT_KIND_RPD:
		return "rpd"
	case limiterv1.LimitKind_LIMIT_KIND_TPM:
		return "tpm"
	case limiterv1.LimitKind_LIMIT_KIND_TPD:
		return "tpd"
	case limiterv1.LimitKind_LIMIT_KIND_TOKEN_CAP:
		return "token_cap"
	case limiterv1.LimitKind_LIMIT_KIND_BUDGET:
		return "budget"
	case limiterv1.LimitKind_LIMIT_KIND_CREDITS:
		return "credits"
	}
	return "unknown"
}

// LevelName is a level's name: key, member, workspace.
func LevelName(l typev1.LimitLevel) string {
	switch l {
	case typev1.LimitLevel_LIMIT_LEVEL_MEMBER:
		return "member"
	case typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE:
		return "workspace"
	}
	return "key"
}

// LimitedBy names a limit at a level as the x-keygate-limited-by header
// and the request log show it: "workspace/tpd", "key/rpm:mock-small".
func LimitedBy(l typev1.LimitLevel, k limiterv1.LimitKind, model string) string {
	s := LevelName(l) + "/" + KindName(k)
	if model != "" {
		s += ":" + model
	}
	return s
}
