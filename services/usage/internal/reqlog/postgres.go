package reqlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Postgres is the shared store: one table, partitioned by UTC day, that
// every usage replica writes to and reads from.
//
// The table is request_log in the connection's search_path, partitioned by
// RANGE on at_ns (Unix nanoseconds, exact), one partition per UTC day named
// request_log_YYYYMMDD. Append creates the partitions a batch needs; Trim
// drops whole days and deletes the older rows of the day holding the cutoff.
// The primary key (at_ns, producer, seq) is the entry's identity: an entry
// written twice is stored once.
type Postgres struct {
	pool *pgxpool.Pool
	log  *slog.Logger

	mu   sync.Mutex
	days map[int64]bool // day partitions known to exist
}

const (
	pgTable = "request_log"
	dayNs   = int64(24 * time.Hour)
	// pgLockTimeout bounds how long partition DDL waits for the table's
	// lock: a long query must not stall every request queued behind it.
	pgLockTimeout = "10s"
)

// pgSchema creates the table and its indexes. Text columns compare
// bytewise (COLLATE "C"): the listing order is the same on every server.
// seq is numeric(20) because it is a uint64.
var pgSchema = []string{
	`CREATE TABLE IF NOT EXISTS request_log (
		at_ns     bigint        NOT NULL,
		producer  text COLLATE "C" NOT NULL,
		seq       numeric(20,0) NOT NULL,
		workspace text COLLATE "C" NOT NULL,
		key       text COLLATE "C" NOT NULL,
		owner     text COLLATE "C" NOT NULL,
		model     text COLLATE "C" NOT NULL,
		status    integer       NOT NULL,
		record    bytea         NOT NULL,
		PRIMARY KEY (at_ns, producer, seq)
	) PARTITION BY RANGE (at_ns)`,
	`CREATE INDEX IF NOT EXISTS request_log_workspace ON request_log (workspace, at_ns DESC)`,
	`CREATE INDEX IF NOT EXISTS request_log_key ON request_log (workspace, key, at_ns DESC)`,
	`CREATE INDEX IF NOT EXISTS request_log_owner ON request_log (workspace, owner, at_ns DESC)`,
	`CREATE INDEX IF NOT EXISTS request_log_model ON request_log (workspace, model, at_ns DESC)`,
}

// OpenPostgres connects to the database at url (postgres://user:pass@host:
// port/db?sslmode=...) and creates the schema if it is missing.
func OpenPostgres(ctx context.Context, url string, log *slog.Logger) (*Postgres, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("reqlog: postgres url: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("reqlog: postgres: %w", err)
	}
	p := &Postgres{pool: pool, log: log, days: map[int64]bool{}}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	days, err := p.partitions(ctx)
	if err != nil {
		pool.Close()
		return nil, err
	}
	for _, d := range days {
		p.days[d] = true
	}
	return p, nil
}

// Close closes the connections.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}

// ddl runs fn in a transaction holding the store's advisory lock, so that
// replicas creating or dropping the same objects take turns.
func (p *Postgres) ddl(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '"+pgLockTimeout+"'"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('keygate.reqlog'))"); err != nil {
			return err
		}
		return fn(tx)
	})
}

func (p *Postgres) migrate(ctx context.Context) error {
	err := p.ddl(ctx, func(tx pgx.Tx) error {
		for _, s := range pgSchema {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reqlog: postgres schema: %w", err)
	}
	return nil
}

// dayOf is the UTC day (days since the epoch) holding ns.
func dayOf(ns int64) int64 {
	d := ns / dayNs
	if ns%dayNs < 0 {
		d--
	}
	return d
}

func partitionName(day int64) string {
	return pgTable + "_" + time.Unix(day*86400, 0).UTC().Format("20060102")
}

// partitionDay reads a partition's day from its name.
func partitionDay(name string) (int64, bool) {
	s, ok := strings.CutPrefix(name, pgTable+"_")
	if !ok || len(s) != 8 {
		return 0, false
	}
	t, err := time.Parse("20060102", s)
	if err != nil {
		return 0, false
	}
	return dayOf(t.UnixNano()), true
}

// dayBounds is the partition bound of a day; the first and last days that
// int64 nanoseconds reach are open-ended.
func dayBounds(day int64) (string, string) {
	lo, hi := "MINVALUE", "MAXVALUE"
	if day > dayOf(math.MinInt64) {
		lo = fmt.Sprint(day * dayNs)
	}
	if day < dayOf(math.MaxInt64) {
		hi = fmt.Sprint((day + 1) * dayNs)
	}
	return lo, hi
}

// partitions lists the day partitions in the database, ascending.
func (p *Postgres) partitions(ctx context.Context) ([]int64, error) {
	rows, err := p.pool.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = $1::regclass`, pgTable)
	if err != nil {
		return nil, fmt.Errorf("reqlog: list partitions: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reqlog: list partitions: %w", err)
	}
	var days []int64
	for _, n := range names {
		if d, ok := partitionDay(n); ok {
			days = append(days, d)
		} else {
			p.log.Warn("request log: partition not named by its day, left alone", "partition", n)
		}
	}
	slices.Sort(days)
	return days, nil
}

// ensureDays creates the partitions of days that are not known to exist.
func (p *Postgres) ensureDays(ctx context.Context, days []int64) error {
	p.mu.Lock()
	missing := slices.DeleteFunc(slices.Clone(days), func(d int64) bool { return p.days[d] })
	p.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	err := p.ddl(ctx, func(tx pgx.Tx) error {
		for _, d := range missing {
			lo, hi := dayBounds(d)
			q := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s PARTITION OF %s FOR VALUES FROM (%s) TO (%s)",
				pgx.Identifier{partitionName(d)}.Sanitize(), pgTable, lo, hi)
			if _, err := tx.Exec(ctx, q); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reqlog: create partition: %w", err)
	}
	p.mu.Lock()
	for _, d := range missing {
		p.days[d] = true
	}
	p.mu.Unlock()
	return nil
}

const pgInsert = `INSERT INTO request_log (at_ns, producer, seq, workspace, key, owner, model, status, record)
	SELECT * FROM unnest($1::bigint[], $2::text[], $3::numeric[], $4::text[], $5::text[], $6::text[], $7::text[], $8::integer[], $9::bytea[])
	ON CONFLICT DO NOTHING`

// Append stores entries in one statement (one transaction). Writing an
// entry again leaves the stored one as it is.
func (p *Postgres) Append(ctx context.Context, es []Entry) error {
	if len(es) == 0 {
		return nil
	}
	n := len(es)
	var (
		at                          = make([]int64, n)
		prod, ws, key, owner, model = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		seq                         = make([]uint64, n)
		status                      = make([]int32, n)
		rec                         = make([][]byte, n)
		days                        []int64
	)
	for i := range es {
		e := &es[i]
		at[i] = e.At.UnixNano()
		prod[i], seq[i] = e.Producer, e.Seq
		ws[i], key[i], owner[i], model[i], status[i] = e.Workspace, e.Key, e.Owner, e.Model, e.Status
		rec[i] = e.Record
		if rec[i] == nil {
			rec[i] = []byte{}
		}
		if d := dayOf(at[i]); !slices.Contains(days, d) {
			days = append(days, d)
		}
	}
	for attempt := 0; ; attempt++ {
		if err := p.ensureDays(ctx, days); err != nil {
			return err
		}
		_, err := p.pool.Exec(ctx, pgInsert, at, prod, seq, ws, key, owner, model, status, rec)
		if err == nil {
			return nil
		}
		// Another replica's Trim dropped a day this one thought was there:
		// forget what it knows and create the partitions again.
		if pe := (*pgconn.PgError)(nil); attempt == 0 && errors.As(err, &pe) && pe.Code == "23514" {
			p.mu.Lock()
			clear(p.days)
			p.mu.Unlock()
			continue
		}
		return fmt.Errorf("reqlog: append: %w", err)
	}
}

// List answers q newest first. It reads the most selective index (key,
// then owner, then model, then the workspace's) and, when other filters
// remain, examines at most MaxScan entries: a short page then comes with a
// cursor to go on.
func (p *Postgres) List(ctx context.Context, q Query) (Page, error) {
	if q.Limit <= 0 {
		return Page{}, nil
	}
	limit := min(q.Limit, MaxScan)
	sql, args := listSQL(q, limit)
	rows, err := p.pool.Query(ctx, sql, args...)
	if err != nil {
		return Page{}, fmt.Errorf("reqlog: list: %w", err)
	}
	page, last, err := readPage(rows, q.Workspace)
	if err != nil {
		return Page{}, err
	}
	return finishPage(page, last, limit), nil
}

// listSQL is the query of one page of q and its arguments: with filters
// beyond the index's, it examines at most MaxScan entries and flags the
// oldest examined as a last row.
func listSQL(q Query, limit int) (string, []any) {
	args := []any{q.Workspace}
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	where := []string{"workspace = $1"}
	var rest []string
	for _, f := range []struct {
		col, val string
	}{{"key", q.Key}, {"owner", q.Owner}, {"model", q.Model}} {
		if f.val == "" {
			continue
		}
		cond := f.col + " = " + arg(f.val)
		if len(where) == 1 {
			where = append(where, cond)
		} else {
			rest = append(rest, cond)
		}
	}
	if q.Status != 0 {
		rest = append(rest, "status = "+arg(q.Status))
	}
	if c := q.Before; c != nil {
		at := arg(c.At.UnixNano())
		// The plain bound on at_ns lets the planner prune partitions.
		where = append(where, fmt.Sprintf("at_ns <= %s AND (at_ns, producer, seq) < (%s, %s, %s)",
			at, at, arg(c.Producer), arg(c.Seq)))
	}
	const order = "ORDER BY at_ns DESC, producer DESC, seq DESC"
	var sql string
	if len(rest) == 0 {
		// Every entry the index yields matches: read one more than the page.
		sql = fmt.Sprintf(`SELECT false, at_ns, producer, seq, key, owner, model, status, record
			FROM request_log WHERE %s %s LIMIT %s`, strings.Join(where, " AND "), order, arg(limit+1))
	} else {
		// Examine at most MaxScan entries of the index, keep the matching
		// ones, then fetch their records; the last row, flagged, is the
		// oldest entry examined when the budget was spent.
		sql = fmt.Sprintf(`WITH scan AS MATERIALIZED (
				SELECT at_ns, producer, seq, key, owner, model, status FROM request_log
				WHERE %[1]s %[2]s LIMIT %[3]d
			), hit AS (
				SELECT * FROM scan WHERE %[4]s %[2]s LIMIT %[5]s
			)
			(SELECT false, h.at_ns, h.producer, h.seq, h.key, h.owner, h.model, h.status, r.record
				FROM hit h JOIN request_log r ON r.at_ns = h.at_ns AND r.producer = h.producer AND r.seq = h.seq
				ORDER BY h.at_ns DESC, h.producer DESC, h.seq DESC)
			UNION ALL
			(SELECT true, at_ns, producer, seq, '', '', '', 0, NULL FROM scan
				WHERE (SELECT count(*) FROM scan) = %[3]d
				ORDER BY at_ns, producer, seq LIMIT 1)`,
			strings.Join(where, " AND "), order, MaxScan, strings.Join(rest, " AND "), arg(limit+1))
	}
	return sql, args
}

// readPage reads the page's rows; last is the flagged row's position.
func readPage(rows pgx.Rows, ws string) (Page, *Cursor, error) {
	defer rows.Close()
	var (
		page Page
		last *Cursor
	)
	for rows.Next() {
		var (
			spent bool
			ns    int64
			e     = Entry{Workspace: ws}
		)
		if err := rows.Scan(&spent, &ns, &e.Producer, &e.Seq, &e.Key, &e.Owner, &e.Model, &e.Status, &e.Record); err != nil {
			return Page{}, nil, fmt.Errorf("reqlog: list: %w", err)
		}
		e.At = time.Unix(0, ns).UTC()
		if spent {
			c := e.cursor()
			last = &c
		} else {
			page.Entries = append(page.Entries, e)
		}
	}
	if err := rows.Err(); err != nil {
		return Page{}, nil, fmt.Errorf("reqlog: list: %w", err)
	}
	return page, last, nil
}

// finishPage orders the page newest first and sets where to go on: after
// its last entry when it has more than limit, else after the last entry
// examined when the scan budget ran out.
func finishPage(page Page, last *Cursor, limit int) Page {
	// UNION ALL keeps no promise of order: put the page in order here.
	slices.SortFunc(page.Entries, func(a, b Entry) int {
		switch {
		case b.cursor().less(a.cursor()):
			return -1
		case a.cursor().less(b.cursor()):
			return 1
		}
		return 0
	})
	switch {
	case len(page.Entries) > limit:
		page.Entries = page.Entries[:limit]
		c := page.Entries[limit-1].cursor()
		page.Next = &c
	case last != nil:
		page.Next = last
	}
	return page
}

// Trim drops the day partitions that end at or before cutoff, then deletes
// the older entries of the day holding it. It returns how many days it
// dropped.
func (p *Postgres) Trim(ctx context.Context, cutoff time.Time) (int, error) {
	ns := cutoff.UnixNano()
	days, err := p.partitions(ctx)
	if err != nil {
		return 0, err
	}
	dropped := 0
	for _, d := range days {
		if _, hi := dayBounds(d); hi == "MAXVALUE" || (d+1)*dayNs > ns {
			break
		}
		p.mu.Lock()
		delete(p.days, d)
		p.mu.Unlock()
		err := p.ddl(ctx, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{partitionName(d)}.Sanitize())
			return err
		})
		if err != nil {
			return dropped, fmt.Errorf("reqlog: trim: %w", err)
		}
		dropped++
		p.log.Info("request log: dropped a day", "day", time.Unix(d*86400, 0).UTC().Format(time.DateOnly))
	}
	// The cutoff is written into the statement, not bound: planned for
	// its value, the delete reads only the day that holds it, by index.
	if _, err := p.pool.Exec(ctx, fmt.Sprintf("DELETE FROM request_log WHERE at_ns < %d", ns)); err != nil {
		return dropped, fmt.Errorf("reqlog: trim: %w", err)
	}
	return dropped, nil
}

// pgCap deletes a workspace's entries at or older than its (keep+1)th
// newest, at most capBatch of them; the workspace index finds both.
const pgCap = `DELETE FROM request_log WHERE (at_ns, producer, seq) IN (
	SELECT at_ns, producer, seq FROM request_log
	WHERE workspace = $1 AND (at_ns, producer, seq) <= (
		SELECT at_ns, producer, seq FROM request_log WHERE workspace = $1
		ORDER BY at_ns DESC, producer DESC, seq DESC OFFSET $2 LIMIT 1)
	ORDER BY at_ns DESC, producer DESC, seq DESC LIMIT $3)`

// Cap keeps the newest keep entries of workspace ws and deletes the rest,
// capBatch to a statement; it returns how many entries it deleted.
func (p *Postgres) Cap(ctx context.Context, ws string, keep int) (int, error) {
	deleted := 0
	for {
		tag, err := p.pool.Exec(ctx, pgCap, ws, keep, capBatch)
		if err != nil {
			return deleted, fmt.Errorf("reqlog: cap: %w", err)
		}
		deleted += int(tag.RowsAffected())
		if tag.RowsAffected() < capBatch {
			return deleted, nil
		}
	}
}
