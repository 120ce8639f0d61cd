package activity

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

type ctxKey struct{}

func from(ctx context.Context) *worker {
	w, _ := ctx.Value(ctxKey{}).(*worker)
	return w
}

// Info describes the attempt, as GetInfo returns it.
type Info struct {
	// Name and Namespace of the Activity.
	Name, Namespace string
	// Attempt is this attempt's number, from 1.
	Attempt int32
	// HeartbeatTimeout is spec.heartbeatTimeout (0: none).
	HeartbeatTimeout time.Duration
	// HeartbeatInterval: at most one heartbeat is sent per this interval.
	HeartbeatInterval time.Duration
	// CancellationGracePeriod is how long a canceled worker may take to stop.
	CancellationGracePeriod time.Duration
	// MaximumAttempts is spec.retryPolicy.maximumAttempts (0: unlimited).
	MaximumAttempts int32
	// StartedTime is when this attempt's worker container started (the worker's start when the
	// operator had not recorded it yet).
	StartedTime time.Time
	// Deadline is when this attempt times out (start-to-close); zero when unlimited.
	Deadline time.Time
	// ScheduleToCloseDeadline is when the whole activity times out; zero when unlimited.
	ScheduleToCloseDeadline time.Time
}

// GetInfo returns the attempt's Info (the zero Info outside an activity).
func GetInfo(ctx context.Context) Info {
	if w := from(ctx); w != nil {
		return w.info
	}
	return Info{}
}

// RecordHeartbeat records a heartbeat with details; it never blocks. A background goroutine sends
// it: the first at once, then at most one per 0.8 × heartbeatTimeout (30 s without one, never
// more than 60 s apart); the latest details win and pending ones are flushed before the outcome.
// One value is stored as it is (a struct or map interoperates with every SDK), several as one
// JSON array, none sends liveness only and keeps the stored details. Details that do not
// serialize or exceed MaxPayloadBytes are logged and dropped, as are calls outside an activity.
func RecordHeartbeat(ctx context.Context, details ...any) {
	w := from(ctx)
	if w == nil {
		return
	}
	var p pending
	switch len(details) {
	case 0:
		p.liveness = true
	case 1:
		b, err := toPayload("heartbeat details", details[0])
		if err != nil {
			w.log.Error("heartbeat dropped", "error", err)
			return
		}
		p.details = b
	default:
		b, err := toPayload("heartbeat details", details)
		if err != nil {
			w.log.Error("heartbeat dropped", "error", err)
			return
		}
		p.details = b
	}
	w.record(p)
}

// HasHeartbeatDetails says whether a previous attempt heartbeated details to resume from.
func HasHeartbeatDetails(ctx context.Context) bool {
	w := from(ctx)
	return w != nil && len(w.previous) > 0 && string(w.previous) != "null"
}

// GetHeartbeatDetails decodes the previous attempts' last heartbeat details into d: one pointer
// receives the whole value, several receive the elements of a JSON array in order. It returns
// ErrNoHeartbeatDetails when there are none.
func GetHeartbeatDetails(ctx context.Context, d ...any) error {
	w := from(ctx)
	if w == nil {
		return errNotActivity
	}
	if !HasHeartbeatDetails(ctx) {
		return ErrNoHeartbeatDetails
	}
	if len(d) == 1 {
		if err := json.Unmarshal(w.previous, d[0]); err != nil {
			return fmt.Errorf("cannot decode status.heartbeatDetails: %w", err)
		}
		return nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(w.previous, &items); err != nil {
		return fmt.Errorf("cannot decode status.heartbeatDetails as %d values: %w", len(d), err)
	}
	for i := range min(len(d), len(items)) {
		if err := json.Unmarshal(items[i], d[i]); err != nil {
			return fmt.Errorf("cannot decode status.heartbeatDetails[%d]: %w", i, err)
		}
	}
	return nil
}

// CancelCause says why the activity's context was canceled ("" while it is not): the heartbeat
// reply's CauseCanceled, CausePaused, CauseReset or CauseSuperseded, or the worker's own.
func CancelCause(ctx context.Context) Cause {
	if w := from(ctx); w != nil {
		return w.cause()
	}
	return ""
}
