// Package activity is the Go worker SDK of heartbeat.dev Activities (Temporal-style activities
// native to Kubernetes), shaped like Temporal's go.temporal.io/sdk/activity so that an activity
// ports by changing imports:
//
//	func LongRunningActivity(ctx context.Context, total int) (int, error) {
//		next := 0
//		if activity.HasHeartbeatDetails(ctx) {
//			var last int
//			if err := activity.GetHeartbeatDetails(ctx, &last); err == nil {
//				next = last + 1
//			}
//		}
//		for i := next; i < total; i++ {
//			select {
//			case <-ctx.Done(): // canceled, paused, reset, superseded: activity.CancelCause(ctx)
//				return 0, ctx.Err()
//			case <-time.After(time.Second):
//			}
//			activity.RecordHeartbeat(ctx, i)
//		}
//		return total, nil
//	}
//
//	func main() { activity.Run(LongRunningActivity) }
//
// The worker runs one attempt of one Activity in its pod (ACTIVITY_NAME, ACTIVITY_NAMESPACE,
// ACTIVITY_ATTEMPT), reads the Activity once, sends throttled heartbeats as JSON Patches of
// activities/status guarded by a test of status.attempt (field manager activity-worker), learns
// of a cancellation from the heartbeat reply or SIGTERM, and writes the outcome. The protocol is
// docs/worker.md of the repository; this package follows it as the Rust SDK does, and the shared
// conformance scenarios (sdk/conformance) check that it does.
package activity
