module github.com/keygate/keygate

go 1.26.0

require (
	github.com/keygate/keygate/gen v0.0.0
	github.com/keygate/keygate/pkg v0.0.0
)

replace (
	github.com/keygate/keygate/gen => ./gen
	github.com/keygate/keygate/pkg => ./pkg
)
